// CoGenesis Edge kernels: cogenesis.GroupQueryAttention, a drop-in for com.microsoft.GroupQueryAttention.
#include "attend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>


namespace {

// cogenesis.GroupQueryAttention: a drop-in for com.microsoft.GroupQueryAttention (same inputs, outputs and
// attributes) whose one-token decode step is ours: rotary on q and k, write the new k/v row into the shared
// KV buffer, then one pass over the cache per KV head for all the query heads that share it (reads the cache
// once; onnxruntime's kernel runs two GEMMs per query head, re-reading and packing the cache each time, which
// grew to ~21 ms per token at a 1.5k context for SmolLM2). Every other case (prefill, batches, local windows,
// softcap, separate past/present buffers) is handed to onnxruntime's own kernel through InvokeOp.

// Non-interleaved rotary (the half-split form): x[i], x[i + half] for i < half = rotary_dim / 2.
inline void rotate(const float* x, float* out, const float* cos, const float* sin, int64_t half, int64_t hd) {
  for (int64_t i = 0; i < half; ++i) {
    out[i] = x[i] * cos[i] - x[i + half] * sin[i];
    out[i + half] = x[i + half] * cos[i] + x[i] * sin[i];
  }
  for (int64_t i = 2 * half; i < hd; ++i) out[i] = x[i];
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
    cg::AttnWork w{q.data(), kc, vc, out.GetTensorMutableData<float>(), nh, nkv, hd, cap, pos + 1,
               scale != 0.0f ? scale : 1.0f / std::sqrt(float(hd))};
    cg::attend(ctx, w);
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

