// CoGenesis Edge kernels: shared declarations. Each op lives in its own file; register.cc adds them to the
// "cogenesis" domain. The C++ API is header-only; ORT_API_MANUAL_INIT: RegisterCustomOps sets the api pointer.
#pragma once
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace cg {

inline uint16_t to_half(float f) {  // exact for values that are fp16 (checked by the caller)
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const int32_t e = int32_t((x >> 23) & 0xff) - 127 + 15;
  const uint32_t mant = x & 0x7fffffu;
  if ((x & 0x7fffffffu) == 0) return uint16_t(sign);
  if (e >= 31) return uint16_t(sign | 0x7c00u);
  if (e <= 0) {  // subnormal half
    const uint32_t m = (mant | 0x800000u) >> (14 - e);
    return uint16_t(sign | m);
  }
  return uint16_t(sign | (uint32_t(e) << 10) | (mant >> 13));
}

// fp32 -> fp16 rounded to nearest even, as numpy's astype(float16) and F16C's vcvtps2ph do (F. Giesen's
// float_to_half_fast3_rtne; scalar so that every build, NEON and plain C++ included, stores the same bits).
inline uint16_t round_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x47800000u) return uint16_t(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u));  // >= 65536: inf, NaN
  if (x < 0x38800000u) {  // below 2^-14: subnormal or zero; the fp32 addition rounds to nearest even
    float a;
    std::memcpy(&a, &x, 4);
    a += 0.5f;
    uint32_t r;
    std::memcpy(&r, &a, 4);
    return uint16_t(sign | (r - 0x3f000000u));
  }
  x += 0xc8000fffu + ((x >> 13) & 1u);  // exponent rebias (-112 << 23) and the rounding bias
  return uint16_t(sign | (x >> 13));
}

inline float from_half(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu;
  uint32_t x;
  if (e == 0) {
    if (m == 0) {
      x = sign;
    } else {  // subnormal
      int sh = 0;
      uint32_t mm = m;
      while (!(mm & 0x400u)) { mm <<= 1; ++sh; }
      x = sign | (uint32_t(127 - 15 - sh + 1) << 23) | ((mm & 0x3ffu) << 13);
    }
  } else if (e == 31) {
    x = sign | 0x7f800000u | (m << 13);
  } else {
    x = sign | ((e - 15 + 127) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// A weight re-laid for streaming: one record per (group of 16 output columns, block of 32 inputs), in the order
// the decode loop reads them (each op defines what a record holds).
struct Records {
  int64_t K = 0, N = 0, nb = 0, size = 0;
  std::vector<uint8_t> rec;  // [N/16][K/32][size]
  void init(int64_t k, int64_t n, int64_t record_bytes) {
    K = k;
    N = n;
    nb = k / 32;
    size = record_bytes;
    rec.assign(static_cast<size_t>((n / 16) * nb * size), 0);
  }
  uint8_t* at(int64_t g, int64_t b) { return rec.data() + (g * nb + b) * size; }
  const uint8_t* at(int64_t g, int64_t b) const { return rec.data() + (g * nb + b) * size; }
};

// A linear op: float activations, uint8 codes at input 1, float scales (and minima) after; one float output.
template <typename Kernel, const char* Name, size_t Inputs>
struct LinearOp : Ort::CustomOpBase<LinearOp<Kernel, Name, Inputs>, Kernel> {
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const { return new Kernel(api, info); }
  const char* GetName() const { return Name; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return Inputs; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

// Input 0 as rows of K floats: the row count M, and output 0 allocated as the same shape with N columns.
inline int64_t linear_rows(Ort::KernelContext& ctx, int64_t K, int64_t N, const char* op, Ort::UnownedValue& y) {
  std::vector<int64_t> shape = ctx.GetInput(0).GetTensorTypeAndShapeInfo().GetShape();
  if (shape.empty() || shape.back() != K)
    ORT_CXX_API_THROW(std::string(op) + ": input's last dimension must be K=" + std::to_string(K), ORT_INVALID_ARGUMENT);
  int64_t M = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) M *= shape[i];
  shape.back() = N;
  y = ctx.GetOutput(0, shape);
  return M;
}

// K and N attributes of a linear op, checked against the record layout (blocks of 32 inputs, groups of 16 outputs).
inline void linear_shape(const Ort::ConstKernelInfo& ki, const char* op, int64_t& K, int64_t& N) {
  K = ki.GetAttribute<int64_t>("K");
  N = ki.GetAttribute<int64_t>("N");
  if (K % 32 != 0 || N % 16 != 0)
    ORT_CXX_API_THROW(std::string(op) + " needs K % 32 == 0 and N % 16 == 0, got K=" + std::to_string(K) +
                          " N=" + std::to_string(N), ORT_INVALID_ARGUMENT);
}

// f(i0, i1) over [0, total) in chunks of `per`, on onnxruntime's intra-op thread pool.
template <typename F>
void parallel_chunks(Ort::KernelContext& ctx, int64_t total, int64_t per, F&& f) {
  struct Job {
    F* f;
    int64_t total, per;
  } job{&f, total, per};
  ctx.ParallelFor(
      [](void* u, size_t i) {
        auto* j = static_cast<Job*>(u);
        const int64_t a = int64_t(i) * j->per;
        (*j->f)(a, std::min(j->total, a + j->per));
      },
      static_cast<size_t>((total + per - 1) / per), 0, &job);
}

}  // namespace cg

const OrtCustomOp* q41_matmul_op();  // q41_matmul.cc: exact GGUF Q4_1 linear
const OrtCustomOp* gqa_op();         // gqa_decode.cc: GroupQueryAttention with our one-token decode step
const OrtCustomOp* q8_0_matmul_op(); // q8_0_matmul.cc: exact GGUF Q8_0 linear (the tied lm_head)
