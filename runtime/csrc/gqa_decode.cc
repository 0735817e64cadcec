// CoGenesis Edge kernels: cogenesis.GroupQueryAttention, a drop-in for com.microsoft.GroupQueryAttention.
#include "attend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace {

// cogenesis.GroupQueryAttention: a drop-in for com.microsoft.GroupQueryAttention (same inputs, outputs and
// attributes) whose one-token decode step is ours: rotary on q and k, write the new k/v row into the shared
// KV buffer, then one pass over the cache per KV head for all the query heads that share it (reads the cache
// once; onnxruntime's kernel runs two GEMMs per query head, re-reading and packing the cache each time, which
// grew to ~21 ms per token at a 1.5k context for SmolLM2). Every other case (prefill, batches, local windows,
// softcap, separate past/present buffers) is handed to onnxruntime's own kernel through InvokeOp.
//
// The KV cache (past/present) may be fp16: the kernel graph's default. Keys and values are rounded to fp16 once
// when written (llama.cpp's default cache type too); every product and sum stays fp32. It halves the bytes the
// decode step reads at long contexts (SmolLM2 at 1.5k tokens: 69 MB of fp32 cache against 96 MB of weights per
// token). With an fp16 cache a prefill is ours too, query by query over the rows as stored, so a prompt gives
// the same logits whether it came in one run, in chunks or token by token (a prefix cache hit equals a cold
// run); onnxruntime's kernel (fp32 only) then serves only what our path does not (batches, local windows,
// softcap, a cache too small), on an fp32 copy of the rows in use, its own new rows unrounded.

// Non-interleaved rotary (the half-split form): x[i], x[i + half] for i < half = rotary_dim / 2.
inline void rotate(const float* x, float* out, const float* cos, const float* sin, int64_t half, int64_t hd) {
  for (int64_t i = 0; i < half; ++i) {
    out[i] = x[i] * cos[i] - x[i + half] * sin[i];
    out[i + half] = x[i + half] * cos[i] + x[i] * sin[i];
  }
  for (int64_t i = 2 * half; i < hd; ++i) out[i] = x[i];
}

using half_t = uint16_t;

// Whether a cache tensor is fp16 (else fp32; any other type is refused).
bool cache_is_f16(const OrtValue* v) {
  const auto t = Ort::ConstValue(v).GetTensorTypeAndShapeInfo().GetElementType();
  if (t != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && t != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16)
    ORT_CXX_API_THROW("GroupQueryAttention: the KV cache must be float32 or float16", ORT_INVALID_ARGUMENT);
  return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
}

// Writes one cache row of hd values (fp32 or rounded to fp16).
inline void store_row(const float* x, void* cache, int64_t row, int64_t hd, bool f16) {
  if (!f16) {
    std::memcpy(static_cast<float*>(cache) + row * hd, x, static_cast<size_t>(hd) * sizeof(float));
    return;
  }
  half_t* dst = static_cast<half_t*>(cache) + row * hd;
  for (int64_t i = 0; i < hd; ++i) dst[i] = cg::round_half(x[i]);
}

// n values fp16 -> fp32 or fp32 -> fp16 (to nearest even, as cg::round_half), 8 or 4 at a time where the CPU
// converts (F16C, NEON), one at a time for the rest.
template <typename S, typename D>
void convert(const S* src, D* dst, int64_t n) {
  constexpr bool up = std::is_same_v<S, half_t>;
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    if constexpr (up) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    else _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  }
#elif defined(__ARM_NEON) && defined(__aarch64__)
  for (; i + 4 <= n; i += 4) {
    if constexpr (up) vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(src + i))));
    else vst1_u16(dst + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(src + i))));
  }
#endif
  for (; i < n; ++i) {
    if constexpr (up) dst[i] = cg::from_half(src[i]);
    else dst[i] = cg::round_half(src[i]);
  }
}

template <typename T>
T attr_or(const Ort::ConstKernelInfo& ki, const char* name, T dflt) {
  try {
    return ki.GetAttribute<T>(name);
  } catch (const Ort::Exception&) {
    return dflt;
  }
}

struct GqaKernel {
  int64_t nh, nkv, window, do_rotary, interleaved, smooth;
  float scale, softcap;
  Ort::Op fallback{nullptr};

  GqaKernel(const OrtApi&, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    nh = ki.GetAttribute<int64_t>("num_heads");
    nkv = ki.GetAttribute<int64_t>("kv_num_heads");
    scale = attr_or<float>(ki, "scale", 0.0f);
    softcap = attr_or<float>(ki, "softcap", 0.0f);
    window = attr_or<int64_t>(ki, "local_window_size", -1);
    do_rotary = attr_or<int64_t>(ki, "do_rotary", 0);
    interleaved = attr_or<int64_t>(ki, "rotary_interleaved", 0);
    smooth = attr_or<int64_t>(ki, "smooth_softmax", 0);
    if (nh <= 0 || nkv <= 0 || nh % nkv != 0)
      ORT_CXX_API_THROW("GroupQueryAttention: num_heads must be a positive multiple of kv_num_heads", ORT_INVALID_ARGUMENT);
    std::vector<Ort::OpAttr> attrs;
    attrs.emplace_back("num_heads", &nh, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
    attrs.emplace_back("kv_num_heads", &nkv, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
    attrs.emplace_back("scale", &scale, 1, OrtOpAttrType::ORT_OP_ATTR_FLOAT);
    attrs.emplace_back("softcap", &softcap, 1, OrtOpAttrType::ORT_OP_ATTR_FLOAT);
    attrs.emplace_back("local_window_size", &window, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
    attrs.emplace_back("do_rotary", &do_rotary, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
    attrs.emplace_back("rotary_interleaved", &interleaved, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
    if (smooth) attrs.emplace_back("smooth_softmax", &smooth, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
    const char* names[] = {"T", "M"};
    const ONNXTensorElementDataType types[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32};
    fallback = Ort::Op::Create(info, "GroupQueryAttention", "com.microsoft", 1, names, types, 2, attrs.data(),
                               attrs.size(), 9, 3);
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const size_t nin = std::min<size_t>(ctx.GetInputCount(), 9);
    const OrtValue* in[9] = {nullptr};
    for (size_t i = 0; i < nin; ++i) in[i] = static_cast<const OrtValue*>(ctx.GetInput(i));
    const std::vector<int64_t> qs = Ort::ConstValue(in[0]).GetTensorTypeAndShapeInfo().GetShape();
    std::vector<int64_t> ks;
    if (in[3]) ks = Ort::ConstValue(in[3]).GetTensorTypeAndShapeInfo().GetShape();
    // fp32 cache: one-token steps only (a prefill is onnxruntime's GEMMs); fp16 cache: every step with the rows
    // it writes inside the buffer, so that each query reads keys and values as stored (see the note above)
    const bool f16 = in[3] && cache_is_f16(in[3]);
    const bool fast_shape = qs.size() == 3 && qs[0] == 1 && (qs[1] == 1 || f16) && !in[1] && !in[2] && in[3] &&
                            in[4] && ks.size() == 4 && ks[0] == 1 && ks[1] == nkv && in[5] && in[7] && in[8];
    const bool fast_attrs = window < 0 && softcap == 0.0f && !smooth && do_rotary == 1 && !interleaved;
    int64_t hd = 0, cap = 0, last = -1;
    if (fast_shape) {
      hd = ks[3];
      cap = ks[2];
      last = Ort::ConstValue(in[5]).GetTensorData<int32_t>()[0];  // seqlens_k = total length - 1
      if (qs[2] != (nh + 2 * nkv) * hd) last = -1;
    }
    const int64_t m = qs.size() > 1 ? qs[1] : 1, first = last - m + 1;  // positions [first, last] are new
    if (!(fast_shape && fast_attrs && first >= 0 && last < cap)) return invoke_fallback(context, ctx, in, nin);
    if (cache_is_f16(in[4]) != f16)
      ORT_CXX_API_THROW("GroupQueryAttention: past key and value caches differ in type", ORT_INVALID_ARGUMENT);
    Ort::UnownedValue out = ctx.GetOutput(0, std::vector<int64_t>{1, m, nh * hd});
    Ort::UnownedValue pk = ctx.GetOutput(1, ks);
    Ort::UnownedValue pv = ctx.GetOutput(2, ks);
    void* kc = pk.GetTensorMutableRawData();
    void* vc = pv.GetTensorMutableRawData();
    const void* past_k = Ort::ConstValue(in[3]).GetTensorRawData();
    const void* past_v = Ort::ConstValue(in[4]).GetTensorRawData();
    if (kc != past_k || vc != past_v) {  // not one shared buffer: copy the past in (rare; our runtime always shares)
      const size_t n = static_cast<size_t>(nkv * cap * hd) * (f16 ? sizeof(half_t) : sizeof(float));
      std::memcpy(kc, past_k, n);
      std::memcpy(vc, past_v, n);
    }
    const std::vector<int64_t> cs = Ort::ConstValue(in[7]).GetTensorTypeAndShapeInfo().GetShape();
    const int64_t half = cs.size() == 2 ? cs[1] : 0;
    if (half * 2 > hd || last >= cs[0])
      ORT_CXX_API_THROW("GroupQueryAttention: position " + std::to_string(last) + " is past the rotary cache (" +
                            std::to_string(cs.empty() ? 0 : cs[0]) + " positions)", ORT_INVALID_ARGUMENT);
    std::vector<float> q(static_cast<size_t>((m * nh + 1) * hd));  // the rotated queries, then one rotated key
    store_new_rows(in, q.data(), kc, vc, m, first, half, hd, cap, f16);
    float* y = out.GetTensorMutableData<float>();
    const float sc = scale != 0.0f ? scale : 1.0f / std::sqrt(float(hd));
    for (int64_t t = 0; t < m; ++t) {  // query t sees the rows up to its own position
      cg::AttnWork w{q.data() + t * nh * hd, kc, vc, y + t * nh * hd, nh, nkv, hd, cap, first + t + 1, sc, f16};
      cg::attend(ctx, w);
    }
  }

  // Rotates the m new tokens' queries into q ([m][nh][hd]) and writes their rotated keys and their values into
  // the cache rows first .. first + m - 1 (rounded to fp16 when the cache is fp16).
  void store_new_rows(const OrtValue* const* in, float* q, void* kc, void* vc, int64_t m, int64_t first,
                      int64_t half, int64_t hd, int64_t cap, bool f16) const {
    const float* qkv = Ort::ConstValue(in[0]).GetTensorData<float>();
    const float* cos0 = Ort::ConstValue(in[7]).GetTensorData<float>();
    const float* sin0 = Ort::ConstValue(in[8]).GetTensorData<float>();
    float* krow = q + m * nh * hd;
    for (int64_t t = 0; t < m; ++t, qkv += (nh + 2 * nkv) * hd) {
      const int64_t pos = first + t;
      const float *cosp = cos0 + pos * half, *sinp = sin0 + pos * half;
      for (int64_t h = 0; h < nh; ++h) rotate(qkv + h * hd, q + (t * nh + h) * hd, cosp, sinp, half, hd);
      for (int64_t h = 0; h < nkv; ++h) {
        rotate(qkv + (nh + h) * hd, krow, cosp, sinp, half, hd);
        store_row(krow, kc, h * cap + pos, hd, f16);
        store_row(qkv + (nh + nkv + h) * hd, vc, h * cap + pos, hd, f16);
      }
    }
  }

  void invoke_fallback(OrtKernelContext* raw, Ort::KernelContext& ctx, const OrtValue* const* in, size_t nin) {
    // InvokeOp needs allocated outputs: shape them as GroupQueryAttention does (present = max(past, total) rows).
    const std::vector<int64_t> qs = Ort::ConstValue(in[0]).GetTensorTypeAndShapeInfo().GetShape();
    const int64_t total = Ort::ConstValue(in[6]).GetTensorData<int32_t>()[0];
    int64_t hd = 0, past = 0;
    if (in[3]) {
      const auto ks = Ort::ConstValue(in[3]).GetTensorTypeAndShapeInfo().GetShape();
      hd = ks[3];
      past = ks[2];
    } else {
      hd = qs[2] / (in[1] ? nh : nh + 2 * nkv);
    }
    Ort::UnownedValue out = ctx.GetOutput(0, std::vector<int64_t>{qs[0], qs[1], nh * hd});
    const std::vector<int64_t> ps = {qs[0], nkv, std::max(past, total), hd};
    Ort::UnownedValue pk = ctx.GetOutput(1, ps);
    Ort::UnownedValue pv = ctx.GetOutput(2, ps);
    OrtValue* outs[3] = {out, pk, pv};
    if (in[3] && cache_is_f16(in[3])) return invoke_f16(raw, in, nin, outs, total, total - qs[1]);
    fallback.Invoke(raw, in, nin, outs, 3);
  }

  // onnxruntime's kernel is fp32 only: run it on fp32 copies of the fp16 cache rows in use ([0, total) of each
  // head), then round what it wrote back into the fp16 present buffers (rows before the new ones are unchanged:
  // fp16 -> fp32 -> fp16 is exact). The copies share one buffer when past and present do, as in our runtime.
  void invoke_f16(OrtKernelContext* raw, const OrtValue* const* in, size_t nin, OrtValue** outs, int64_t total,
                  int64_t past_len) {
    Ort::ConstValue pastk(in[3]), pastv(in[4]);
    const std::vector<int64_t> pshape = pastk.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> oshape = Ort::ConstValue(outs[1]).GetTensorTypeAndShapeInfo().GetShape();
    const bool shared = pastk.GetTensorRawData() == Ort::ConstValue(outs[1]).GetTensorRawData();
    const int64_t b = pshape[0], hd = pshape[3], prow = pshape[2], orow = oshape[2];
    const int64_t rows = std::clamp<int64_t>(past_len, 0, prow);
    auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<float> buf[4];  // past k, past v, present k, present v (present: only when not shared)
    std::vector<Ort::Value> vals;
    for (int i = 0; i < 2; ++i) {
      buf[i].assign(static_cast<size_t>(b * nkv * prow * hd), 0.0f);
      copy_rows(static_cast<const half_t*>(Ort::ConstValue(in[3 + i]).GetTensorRawData()), buf[i].data(), b * nkv, prow,
            rows, hd);
      vals.push_back(Ort::Value::CreateTensor<float>(mem, buf[i].data(), buf[i].size(), pshape.data(), pshape.size()));
    }
    for (int i = 0; i < 2; ++i) {
      if (!shared) buf[2 + i].assign(static_cast<size_t>(b * nkv * orow * hd), 0.0f);
      float* p = shared ? buf[i].data() : buf[2 + i].data();
      vals.push_back(Ort::Value::CreateTensor<float>(mem, p, static_cast<size_t>(b * nkv * orow * hd), oshape.data(),
                                                     oshape.size()));
    }
    const OrtValue* in2[9];
    for (size_t i = 0; i < nin; ++i) in2[i] = in[i];
    in2[3] = vals[0];
    in2[4] = vals[1];
    OrtValue* outs2[3] = {outs[0], vals[2], vals[3]};
    fallback.Invoke(raw, in2, nin, outs2, 3);
    for (int i = 0; i < 2; ++i)
      copy_rows(vals[2 + i].GetTensorData<float>(), static_cast<half_t*>(Ort::UnownedValue(outs[1 + i]).GetTensorMutableRawData()),
             b * nkv, orow, std::min(total, orow), hd);
  }

  // dst[h][t] = src[h][t] for t < rows of `cap`-row heads: fp16 -> fp32 (widen) or fp32 -> fp16 (narrow).
  template <typename S, typename D>
  static void copy_rows(const S* src, D* dst, int64_t heads, int64_t cap, int64_t rows, int64_t hd) {
    for (int64_t h = 0; h < heads; ++h) convert(src + h * cap * hd, dst + h * cap * hd, rows * hd);
  }
};

struct GqaOp : Ort::CustomOpBase<GqaOp, GqaKernel> {
  GqaOp() { OrtCustomOp::InferOutputShapeFn = &infer; }

  // present's type is the past's (fp32 or fp16). onnxruntime needs this function because two inputs (the
  // caches) have a free type; shapes are left to run time, as the fast path and the fallback size them.
  static OrtStatusPtr infer(const OrtCustomOp*, OrtShapeInferContext* c) {
    const OrtApi& api = Ort::GetApi();
    ONNXTensorElementDataType t = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    OrtTensorTypeAndShapeInfo* past = nullptr;
    if (OrtStatus* st = api.ShapeInferContext_GetInputTypeShape(c, 3, &past)) {
      api.ReleaseStatus(st);  // no past input: fp32, as onnxruntime's own kernel
    } else if (past != nullptr) {
      t = Ort::ConstTensorTypeAndShapeInfo(past).GetElementType();  // the context owns `past`
      if (t == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED) t = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    }
    const int64_t dims[4] = {-1, -1, -1, -1};
    for (size_t i = 0; i < 3; ++i) {
      OrtTensorTypeAndShapeInfo* o = nullptr;
      OrtStatus* st = api.CreateTensorTypeAndShapeInfo(&o);
      if (!st) st = api.SetTensorElementType(o, i == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : t);
      if (!st) st = api.SetDimensions(o, dims, i == 0 ? 3 : 4);
      if (!st) st = api.ShapeInferContext_SetOutputTypeShape(c, i, o);
      if (o != nullptr) api.ReleaseTensorTypeAndShapeInfo(o);
      if (st) return st;
    }
    return nullptr;
  }

  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const { return new GqaKernel(api, info); }
  const char* GetName() const { return "GroupQueryAttention"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 9; }
  ONNXTensorElementDataType GetInputType(size_t i) const {  // the caches (3, 4): fp32 or fp16, checked at run
    if (i == 3 || i == 4) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    return (i == 5 || i == 6) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return (i == 0 || i == 5 || i == 6) ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(size_t i) const {  // present (1, 2): the past's type
    return i == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
};

const GqaOp kGqa;

}  // namespace

const OrtCustomOp* gqa_op() { return &kGqa; }

