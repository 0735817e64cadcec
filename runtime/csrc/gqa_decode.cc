// CoGenesis Edge kernels: cogenesis.GroupQueryAttention, a drop-in for com.microsoft.GroupQueryAttention.
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// cogenesis.GroupQueryAttention: a drop-in for com.microsoft.GroupQueryAttention (same inputs, outputs and
// attributes) whose one-token decode step is ours: rotary on q and k, write the new k/v row into the shared
// KV buffer, then one pass over the cache per KV head for all the query heads that share it (reads the cache
// once; onnxruntime's kernel runs two GEMMs per query head, re-reading and packing the cache each time, which
// grew to ~21 ms per token at a 1.5k context for SmolLM2). Every other case (prefill, batches, local windows,
// softcap, separate past/present buffers) is handed to onnxruntime's own kernel through InvokeOp.

template <typename T>
T attr_or(const Ort::ConstKernelInfo& ki, const char* name, T dflt) {
  try {
    return ki.GetAttribute<T>(name);
  } catch (const Ort::Exception&) {
    return dflt;
  }
}

#if defined(__AVX512F__)
// exp for softmax inputs (x <= 0): Cephes-style range reduction + degree-6 polynomial, ~2 ulp.
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}
#endif

inline void softmax_inplace(float* s, int64_t n) {
  float mx = s[0];
  for (int64_t t = 1; t < n; ++t) mx = std::max(mx, s[t]);
  float sum = 0;
  int64_t t = 0;
#if defined(__AVX512F__)
  __m512 vs = _mm512_setzero_ps();
  const __m512 vm = _mm512_set1_ps(mx);
  for (; t + 16 <= n; t += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + t), vm));
    _mm512_storeu_ps(s + t, e);
    vs = _mm512_add_ps(vs, e);
  }
  sum = _mm512_reduce_add_ps(vs);
#endif
  for (; t < n; ++t) {
    s[t] = std::exp(s[t] - mx);
    sum += s[t];
  }
  const float inv = 1.0f / sum;
  for (t = 0; t < n; ++t) s[t] *= inv;
}

// Non-interleaved rotary (the half-split form): x[i], x[i + half] for i < half = rotary_dim / 2.
inline void rotate(const float* x, float* out, const float* cos, const float* sin, int64_t half, int64_t hd) {
  for (int64_t i = 0; i < half; ++i) {
    out[i] = x[i] * cos[i] - x[i + half] * sin[i];
    out[i + half] = x[i + half] * cos[i] + x[i] * sin[i];
  }
  for (int64_t i = 2 * half; i < hd; ++i) out[i] = x[i];
}

struct AttnWork {
  const float* q;     // [nh][hd], rotated
  const float* kc;    // [nkv][cap][hd]
  const float* vc;
  float* out;         // [nh][hd]
  int64_t nh, nkv, hd, cap, len;
  float scale;
};

#if defined(__AVX512F__)
// One KV head, all G query heads sharing it, head_dim = 16 * D: each K row and each V row is loaded once and
// used by every query head (queries and outputs stay in registers).
template <int D, int G>
void attend_fixed(const AttnWork& w, int64_t h, float* sc) {
  const int64_t len = w.len, hd = 16 * D;
  const float* K = w.kc + h * w.cap * hd;
  const float* V = w.vc + h * w.cap * hd;
  __m512 q[G][D];
  for (int j = 0; j < G; ++j)
    for (int d = 0; d < D; ++d) q[j][d] = _mm512_loadu_ps(w.q + (h * G + j) * hd + 16 * d);
  for (int64_t t = 0; t < len; ++t) {
    const float* k = K + t * hd;
    __m512 kr[D];
    for (int d = 0; d < D; ++d) kr[d] = _mm512_loadu_ps(k + 16 * d);
    for (int j = 0; j < G; ++j) {
      __m512 a = _mm512_mul_ps(q[j][0], kr[0]);
      for (int d = 1; d < D; ++d) a = _mm512_fmadd_ps(q[j][d], kr[d], a);
      sc[j * len + t] = _mm512_reduce_add_ps(a) * w.scale;
    }
  }
  for (int j = 0; j < G; ++j) softmax_inplace(sc + j * len, len);
  __m512 o[G][D];
  for (int j = 0; j < G; ++j)
    for (int d = 0; d < D; ++d) o[j][d] = _mm512_setzero_ps();
  for (int64_t t = 0; t < len; ++t) {
    const float* v = V + t * hd;
    __m512 vr[D];
    for (int d = 0; d < D; ++d) vr[d] = _mm512_loadu_ps(v + 16 * d);
    for (int j = 0; j < G; ++j) {
      const __m512 p = _mm512_set1_ps(sc[j * len + t]);
      for (int d = 0; d < D; ++d) o[j][d] = _mm512_fmadd_ps(p, vr[d], o[j][d]);
    }
  }
  for (int j = 0; j < G; ++j)
    for (int d = 0; d < D; ++d) _mm512_storeu_ps(w.out + (h * G + j) * hd + 16 * d, o[j][d]);
}
#endif

// One KV head: scores for its query heads over the cache, softmax, weighted sum of values.
void attend_kv_head(const AttnWork& w, int64_t h) {
  const int64_t group = w.nh / w.nkv, hd = w.hd, len = w.len;
  thread_local std::vector<float> sc;
  sc.resize(static_cast<size_t>(group * len));
#if defined(__AVX512F__)
  if (hd == 64 && group == 3) return attend_fixed<4, 3>(w, h, sc.data());  // SmolLM2 (9 heads over 3)
  if (hd == 64 && group == 4) return attend_fixed<4, 4>(w, h, sc.data());
  if (hd == 64 && group == 2) return attend_fixed<4, 2>(w, h, sc.data());
  if (hd == 128 && group == 2) return attend_fixed<8, 2>(w, h, sc.data());
  if (hd == 64 && group == 1) return attend_fixed<4, 1>(w, h, sc.data());
#endif
  const float* K = w.kc + h * w.cap * hd;
  const float* V = w.vc + h * w.cap * hd;
  for (int64_t j = 0; j < group; ++j) {
    const float* q = w.q + (h * group + j) * hd;
    float* s = sc.data() + j * len;
    for (int64_t t = 0; t < len; ++t) {
      const float* k = K + t * hd;
      float acc = 0;
      for (int64_t d = 0; d < hd; ++d) acc += q[d] * k[d];
      s[t] = acc * w.scale;
    }
    softmax_inplace(s, len);
  }
  for (int64_t j = 0; j < group; ++j) {
    float* o = w.out + (h * group + j) * hd;
    const float* s = sc.data() + j * len;
    std::fill(o, o + hd, 0.0f);
    for (int64_t t = 0; t < len; ++t) {
      const float p = s[t], *v = V + t * hd;
      for (int64_t d = 0; d < hd; ++d) o[d] += p * v[d];  // vectorizes: no reduction across lanes
    }
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
    const bool fast_shape = qs.size() == 3 && qs[0] == 1 && qs[1] == 1 && !in[1] && !in[2] && in[3] && in[4] &&
                            ks.size() == 4 && ks[0] == 1 && ks[1] == nkv && in[5] && in[7] && in[8];
    const bool fast_attrs = window < 0 && softcap == 0.0f && !smooth && do_rotary == 1 && !interleaved;
    int64_t hd = 0, cap = 0, pos = -1;
    if (fast_shape) {
      hd = ks[3];
      cap = ks[2];
      pos = Ort::ConstValue(in[5]).GetTensorData<int32_t>()[0];  // seqlens_k = total length - 1
      if (qs[2] != (nh + 2 * nkv) * hd) pos = -1;
    }
    std::vector<int64_t> out_shape = {qs[0], qs.size() > 1 ? qs[1] : 1, nh * (hd ? hd : 1)};
    if (!(fast_shape && fast_attrs && pos >= 0 && pos < cap)) return invoke_fallback(context, ctx, in, nin);
    out_shape[2] = nh * hd;
    Ort::UnownedValue out = ctx.GetOutput(0, out_shape);
    Ort::UnownedValue pk = ctx.GetOutput(1, ks);
    Ort::UnownedValue pv = ctx.GetOutput(2, ks);
    float* kc = pk.GetTensorMutableData<float>();
    float* vc = pv.GetTensorMutableData<float>();
    if (kc != Ort::ConstValue(in[3]).GetTensorData<float>() || vc != Ort::ConstValue(in[4]).GetTensorData<float>()) {
      // not one shared buffer: copy the past in, then proceed (rare; our runtime always shares)
      const size_t n = static_cast<size_t>(nkv * cap * hd);
      std::memcpy(kc, Ort::ConstValue(in[3]).GetTensorData<float>(), n * sizeof(float));
      std::memcpy(vc, Ort::ConstValue(in[4]).GetTensorData<float>(), n * sizeof(float));
    }
    const std::vector<int64_t> cs = Ort::ConstValue(in[7]).GetTensorTypeAndShapeInfo().GetShape();
    const int64_t half = cs.size() == 2 ? cs[1] : 0;
    if (half * 2 > hd || pos >= cs[0])
      ORT_CXX_API_THROW("GroupQueryAttention: position " + std::to_string(pos) + " is past the rotary cache (" +
                            std::to_string(cs.empty() ? 0 : cs[0]) + " positions)", ORT_INVALID_ARGUMENT);
    const float* cosp = Ort::ConstValue(in[7]).GetTensorData<float>() + pos * half;
    const float* sinp = Ort::ConstValue(in[8]).GetTensorData<float>() + pos * half;
    const float* qkv = Ort::ConstValue(in[0]).GetTensorData<float>();
    std::vector<float> q(static_cast<size_t>(nh * hd));
    for (int64_t h = 0; h < nh; ++h) rotate(qkv + h * hd, q.data() + h * hd, cosp, sinp, half, hd);
    for (int64_t h = 0; h < nkv; ++h) {
      rotate(qkv + (nh + h) * hd, kc + (h * cap + pos) * hd, cosp, sinp, half, hd);
      std::memcpy(vc + (h * cap + pos) * hd, qkv + (nh + nkv + h) * hd, static_cast<size_t>(hd) * sizeof(float));
    }
    AttnWork w{q.data(), kc, vc, out.GetTensorMutableData<float>(), nh, nkv, hd, cap, pos + 1,
               scale != 0.0f ? scale : 1.0f / std::sqrt(float(hd))};
    ctx.ParallelFor([](void* u, size_t h) { attend_kv_head(*static_cast<AttnWork*>(u), int64_t(h)); },
                    static_cast<size_t>(nkv), 0, &w);
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
    fallback.Invoke(raw, in, nin, outs, 3);
  }
};

struct GqaOp : Ort::CustomOpBase<GqaOp, GqaKernel> {
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const { return new GqaKernel(api, info); }
  const char* GetName() const { return "GroupQueryAttention"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 9; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return (i == 5 || i == 6) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return (i == 0 || i == 5 || i == 6) ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

const GqaOp kGqa;

}  // namespace

const OrtCustomOp* gqa_op() { return &kGqa; }

