// CoGenesis Edge kernels: decode attention (attend.cc), shared by cogenesis.GroupQueryAttention (gqa_decode.cc).
#pragma once
#include "kernels.h"

#include <cstdint>

namespace cg {

struct AttnWork {
  const float* q;     // [nh][hd], rotated
  const void* kc;     // [nkv][cap][hd], fp32 or fp16 (f16)
  const void* vc;
  float* out;         // [nh][hd]
  int64_t nh, nkv, hd, cap, len;
  float scale;
  bool f16;           // the cache holds IEEE fp16 (widened to fp32 on load)
};

// out = softmax(q·Kᵀ·scale)·V for every query head, one new token, over w.len cache rows; on the op's thread pool.
void attend(Ort::KernelContext& ctx, const AttnWork& w);

}  // namespace cg
