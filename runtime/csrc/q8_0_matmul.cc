// CoGenesis Edge kernels: an exact GGUF Q8_0 MatMul (SmolLM2's tied embedding / lm_head) as a custom op.
//
// Why hand-written: onnxruntime's 8-bit MatMulNBits is fast only with int8 activations, which move logits by
// up to ~0.5; the portable graph therefore recomputes the top 64 logits exactly and leaves the tail
// approximate. This op computes every logit exactly in fp32,
//     Y = A @ W,  W[k, n] = d[n, b] * (u[n, k] - 128),  b = k / 32
// over the same initializers (u: MatMulNBits' uint8 codes, d: its scales), streaming 1.06 bytes per weight.
// Decode (up to 8 rows) is ours; more rows go to onnxruntime's MatMulNBits with fp32 activations (InvokeOp).
#include "kernels.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace {

constexpr int64_t BLK = 32;
constexpr int64_t G = 16;
constexpr int64_t REC = BLK * G + 2 * G;  // 512 int8 codes (row k: 16 columns) + 16 fp16 scales
constexpr int64_t SMALL_M = 8;

using Packed = cg::Records;

bool pack(const uint8_t* B, const float* scales, int64_t K, int64_t N, Packed& p) {
  p.init(K, N, REC);
  for (int64_t g = 0; g < N / G; ++g)
    for (int64_t b = 0; b < p.nb; ++b) {
      uint8_t* r = p.at(g, b);
      uint16_t* dh = reinterpret_cast<uint16_t*>(r + BLK * G);
      for (int64_t j = 0; j < G; ++j) {
        const int64_t n = g * G + j;
        const uint8_t* src = B + (n * p.nb + b) * BLK;
        for (int64_t k = 0; k < BLK; ++k) r[k * G + j] = static_cast<uint8_t>(int(src[k]) - 128);  // int8 bits
        const float d = scales[n * p.nb + b];
        dh[j] = cg::to_half(d);
        if (cg::from_half(dh[j]) != d) return false;
      }
    }
  return true;
}

#if defined(__AVX2__) && !defined(__AVX512F__)
inline __m256 i8x8(const uint8_t* p) {  // 8 int8 codes as floats
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
#endif

void gemv(const Packed& p, const float* x, float* y, int64_t g0, int64_t g1) {
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* r = p.at(g, 0);
#if defined(__AVX512F__)
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < p.nb; ++b, r += REC) {
      for (int l = 0; l < REC; l += 64) _mm_prefetch(reinterpret_cast<const char*>(r + 4 * REC + l), _MM_HINT_T0);
      const float* xb = x + b * BLK;
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
      for (int k = 0; k < BLK; k += 2) {
        const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + k * G))));
        const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + (k + 1) * G))));
        a0 = _mm512_fmadd_ps(w0, _mm512_set1_ps(xb[k]), a0);
        a1 = _mm512_fmadd_ps(w1, _mm512_set1_ps(xb[k + 1]), a1);
      }
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r + BLK * G)));
      acc = _mm512_fmadd_ps(_mm512_add_ps(a0, a1), d, acc);
    }
    _mm512_storeu_ps(y + g * G, acc);
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t b = 0; b < p.nb; ++b, r += REC) {
      for (int l = 0; l < REC; l += 64) _mm_prefetch(reinterpret_cast<const char*>(r + 4 * REC + l), _MM_HINT_T0);
      const float* xb = x + b * BLK;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;  // columns 0-7 / 8-15, even / odd k
      for (int k = 0; k < BLK; k += 2) {
        const __m256 xe = _mm256_set1_ps(xb[k]), xo = _mm256_set1_ps(xb[k + 1]);
        a0 = _mm256_fmadd_ps(i8x8(r + k * G), xe, a0);
        a1 = _mm256_fmadd_ps(i8x8(r + k * G + 8), xe, a1);
        b0 = _mm256_fmadd_ps(i8x8(r + (k + 1) * G), xo, b0);
        b1 = _mm256_fmadd_ps(i8x8(r + (k + 1) * G + 8), xo, b1);
      }
      const __m128i* dh = reinterpret_cast<const __m128i*>(r + BLK * G);
      acc0 = _mm256_fmadd_ps(_mm256_add_ps(a0, b0), _mm256_cvtph_ps(_mm_loadu_si128(dh)), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_add_ps(a1, b1), _mm256_cvtph_ps(_mm_loadu_si128(dh + 1)), acc1);
    }
    _mm256_storeu_ps(y + g * G, acc0);
    _mm256_storeu_ps(y + g * G + 8, acc1);
#elif defined(__ARM_NEON) && defined(__aarch64__)
    float32x4_t acc[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
    for (int64_t b = 0; b < p.nb; ++b, r += REC) {
      for (int l = 0; l < REC; l += 64) __builtin_prefetch(r + 4 * REC + l);
      const float* xb = x + b * BLK;
      float32x4_t a[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
      for (int k = 0; k < BLK; ++k) {  // 16 int8 codes of row k, widened to 4 x 4 floats
        const int8x16_t v = vld1q_s8(reinterpret_cast<const int8_t*>(r + k * G));
        const int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_s8(vget_high_s8(v));
        a[0] = vfmaq_n_f32(a[0], vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), xb[k]);
        a[1] = vfmaq_n_f32(a[1], vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo))), xb[k]);
        a[2] = vfmaq_n_f32(a[2], vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), xb[k]);
        a[3] = vfmaq_n_f32(a[3], vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi))), xb[k]);
      }
      const uint16_t* dh = reinterpret_cast<const uint16_t*>(r + BLK * G);
      for (int c = 0; c < 4; ++c) acc[c] = vfmaq_f32(acc[c], a[c], vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(dh + 4 * c))));
    }
    for (int c = 0; c < 4; ++c) vst1q_f32(y + g * G + 4 * c, acc[c]);
#else
    float acc[G] = {0};
    for (int64_t b = 0; b < p.nb; ++b, r += REC) {
      const float* xb = x + b * BLK;
      const int8_t* q = reinterpret_cast<const int8_t*>(r);
      const uint16_t* dh = reinterpret_cast<const uint16_t*>(r + BLK * G);
      float a[G] = {0};
      for (int k = 0; k < BLK; ++k)
        for (int j = 0; j < G; ++j) a[j] += float(q[k * G + j]) * xb[k];
      for (int j = 0; j < G; ++j) acc[j] += a[j] * cg::from_half(dh[j]);
    }
    std::memcpy(y + g * G, acc, sizeof(acc));
#endif
  }
}

struct Q8Kernel {
  Packed p;
  Ort::Op mnb{nullptr};

  Q8Kernel(const OrtApi&, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    int64_t K, N;
    cg::linear_shape(ki, "Q8_0MatMul", K, N);
    int c1 = 0, c2 = 0;
    Ort::ConstValue B = ki.GetTensorConstantInput(1, &c1);
    Ort::ConstValue S = ki.GetTensorConstantInput(2, &c2);
    if (!c1 || !c2) ORT_CXX_API_THROW("Q8_0MatMul: codes and scales must be initializers", ORT_INVALID_ARGUMENT);
    if (int64_t(B.GetTensorTypeAndShapeInfo().GetElementCount()) != N * K ||
        int64_t(S.GetTensorTypeAndShapeInfo().GetElementCount()) != N * K / BLK)
      ORT_CXX_API_THROW("Q8_0MatMul: initializer sizes do not match K=" + std::to_string(K) + " N=" +
                            std::to_string(N), ORT_INVALID_ARGUMENT);
    if (!pack(B.GetTensorData<uint8_t>(), S.GetTensorData<float>(), K, N, p))
      ORT_CXX_API_THROW("Q8_0MatMul: scales are not fp16 values (not a GGUF Q8_0 weight); use the portable model.onnx",
                        ORT_INVALID_ARGUMENT);
    int64_t bits = 8, block = BLK, acc = 0;  // fp32 activations: exact
    Ort::OpAttr attrs[] = {{"K", &K, 1, OrtOpAttrType::ORT_OP_ATTR_INT}, {"N", &N, 1, OrtOpAttrType::ORT_OP_ATTR_INT},
                           {"bits", &bits, 1, OrtOpAttrType::ORT_OP_ATTR_INT},
                           {"block_size", &block, 1, OrtOpAttrType::ORT_OP_ATTR_INT},
                           {"accuracy_level", &acc, 1, OrtOpAttrType::ORT_OP_ATTR_INT}};
    const char* names[] = {"T1", "T2", "T3", "T4"};
    const ONNXTensorElementDataType types[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
                                               ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32};
    mnb = Ort::Op::Create(info, "MatMulNBits", "com.microsoft", 1, names, types, 4, attrs, 5, 3, 1);
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::UnownedValue y{nullptr};
    const int64_t M = cg::linear_rows(ctx, p.K, p.N, "Q8_0MatMul", y);
    if (M == 0) return;
    if (M > SMALL_M) {
      const OrtValue* ins[3] = {ctx.GetInput(0), ctx.GetInput(1), ctx.GetInput(2)};
      OrtValue* outs[1] = {y};
      mnb.Invoke(context, ins, 3, outs, 1);
      return;
    }
    const float* A = ctx.GetInput(0).GetTensorData<float>();
    float* Y = y.GetTensorMutableData<float>();
    cg::parallel_chunks(ctx, p.N / G, 64, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g)
        for (int64_t m = 0; m < M; ++m) gemv(p, A + m * p.K, Y + m * p.N, g, g + 1);
    });
  }
};

constexpr char kQ8OpName[] = "Q8_0MatMul";
const cg::LinearOp<Q8Kernel, kQ8OpName, 3> kQ8;

}  // namespace

const OrtCustomOp* q8_0_matmul_op() { return &kQ8; }
