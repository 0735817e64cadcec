// CoGenesis Edge kernels: one-token decode attention over the KV cache (cogenesis.GroupQueryAttention's fast path).
//
// AVX-512: one task per KV head; each K and V row is loaded once for all the query heads sharing it.
// Elsewhere (AVX2 + FMA, plain C++): split-softmax over chunks of the cache ("flash decoding"): one task per
// (KV head, chunk of CHUNK rows) computes its scores, their max m, sum l of exp(s - m) and the unnormalised
// Σ exp(s - m)·v; the chunks are merged exactly afterwards. With 3 KV heads (SmolLM2) one task per head kept
// one of two threads idle for a third of the attention; a 1.5k context now gives 36 tasks.
// The cache is fp32 or fp16 (every path widens fp16 rows to fp32 on load; all arithmetic stays fp32).
#include "attend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#define CG_NEON 1
#endif

namespace {

using half_t = uint16_t;  // IEEE fp16 bits: a kernel graph exported with an fp16 KV cache

// Row loads that widen to fp32: one overload per cache type, per vector width.
#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const half_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define CG_AVX2 1
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const half_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
#endif
#if defined(CG_NEON)
inline float32x4_t load4(const float* p) { return vld1q_f32(p); }
inline float32x4_t load4(const half_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
#endif
inline float load1(const float* p) { return *p; }
inline float load1(const half_t* p) { return cg::from_half(*p); }

// Prefetch `bytes` from p, one cache line at a time.
inline void prefetch(const void* p, int64_t bytes) {
  for (int64_t l = 0; l < bytes; l += 64) __builtin_prefetch(static_cast<const char*>(p) + l);
}

// The cache rows of KV head h from row t0 on.
template <typename T>
const T* rows(const void* cache, const cg::AttnWork& w, int64_t h, int64_t t0) {
  return static_cast<const T*>(cache) + (h * w.cap + t0) * w.hd;
}

// exp(x) for softmax inputs (x <= 0), the same at every vector width: x = n·ln2 + r (ln2 split in two for
// precision), e^r by a degree-6 polynomial (Cephes), 2^n in the exponent bits; ~2 ulp.
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpPoly[] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f,
                              1.6666665459e-1f, 5.0000001201e-1f};  // Horner order, highest degree first

#if defined(__AVX512F__)
// kExpPoly at 16 lanes.
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpPoly[0]);
  for (size_t i = 1; i < sizeof(kExpPoly) / sizeof(float); ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[i]));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}
#endif

#if defined(CG_AVX2)
// kExpPoly at 8 lanes (no vscalef: 2^n built in the exponent bits).
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpPoly[0]);
  for (size_t i = 1; i < sizeof(kExpPoly) / sizeof(float); ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpPoly[i]));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// The 8 lane sums of a[0..7], in order, in one register (a transpose by horizontal adds).
inline __m256 sum8x8(const __m256* a) {
  const __m256 h0 = _mm256_hadd_ps(a[0], a[1]), h1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 h2 = _mm256_hadd_ps(a[4], a[5]), h3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 l = _mm256_hadd_ps(h0, h1), u = _mm256_hadd_ps(h2, h3);
  return _mm256_add_ps(_mm256_permute2f128_ps(l, u, 0x20), _mm256_permute2f128_ps(l, u, 0x31));
}

#endif

#if defined(CG_NEON)
// kExpPoly at 4 lanes.
inline float32x4_t exp4(float32x4_t x) {
  x = vmaxq_f32(x, vdupq_n_f32(-87.3f));
  const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, kLog2e));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(kLn2Hi));
  r = vfmsq_f32(r, n, vdupq_n_f32(kLn2Lo));
  float32x4_t p = vdupq_n_f32(kExpPoly[0]);
  for (size_t i = 1; i < sizeof(kExpPoly) / sizeof(float); ++i) p = vfmaq_f32(vdupq_n_f32(kExpPoly[i]), p, r);
  p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), vmulq_f32(p, r), r);
  const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  return vmulq_f32(p, vreinterpretq_f32_s32(e));
}
#endif

#if defined(__AVX512F__)
inline void softmax_inplace(float* s, int64_t n) {
  float mx = s[0];
  for (int64_t t = 1; t < n; ++t) mx = std::max(mx, s[t]);
  float sum = 0;
  int64_t t = 0;
  __m512 vs = _mm512_setzero_ps();
  const __m512 vm = _mm512_set1_ps(mx);
  for (; t + 16 <= n; t += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + t), vm));
    _mm512_storeu_ps(s + t, e);
    vs = _mm512_add_ps(vs, e);
  }
  sum = _mm512_reduce_add_ps(vs);
  for (; t < n; ++t) {
    s[t] = std::exp(s[t] - mx);
    sum += s[t];
  }
  const float inv = 1.0f / sum;
  for (t = 0; t < n; ++t) s[t] *= inv;
}
#endif

#if defined(__AVX512F__)
// One KV head, all G query heads sharing it, head_dim = 16 * D: each K row and each V row is loaded once and
// used by every query head (queries and outputs stay in registers).
template <int D, int G, typename T>
void attend_fixed(const cg::AttnWork& w, int64_t h, float* sc) {
  const int64_t len = w.len, hd = 16 * D;
  const T* K = rows<T>(w.kc, w, h, 0);
  const T* V = rows<T>(w.vc, w, h, 0);
  __m512 q[G][D];
  for (int j = 0; j < G; ++j)
    for (int d = 0; d < D; ++d) q[j][d] = _mm512_loadu_ps(w.q + (h * G + j) * hd + 16 * d);
  for (int64_t t = 0; t < len; ++t) {
    const T* k = K + t * hd;
    __m512 kr[D];
    for (int d = 0; d < D; ++d) kr[d] = load16(k + 16 * d);
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
    const T* v = V + t * hd;
    __m512 vr[D];
    for (int d = 0; d < D; ++d) vr[d] = load16(v + 16 * d);
    for (int j = 0; j < G; ++j) {
      const __m512 p = _mm512_set1_ps(sc[j * len + t]);
      for (int d = 0; d < D; ++d) o[j][d] = _mm512_fmadd_ps(p, vr[d], o[j][d]);
    }
  }
  for (int j = 0; j < G; ++j)
    for (int d = 0; d < D; ++d) _mm512_storeu_ps(w.out + (h * G + j) * hd + 16 * d, o[j][d]);
}

// The shapes attend_fixed is instantiated for (SmolLM2: 9 query heads over 3, head_dim 64); false otherwise.
template <typename T>
bool attend_fixed_any(const cg::AttnWork& w, int64_t h) {
  thread_local std::vector<float> sc;
  sc.resize(static_cast<size_t>((w.nh / w.nkv) * w.len));
  const int64_t group = w.nh / w.nkv;
  if (w.hd == 64 && group == 3) return attend_fixed<4, 3, T>(w, h, sc.data()), true;
  if (w.hd == 64 && group == 4) return attend_fixed<4, 4, T>(w, h, sc.data()), true;
  if (w.hd == 64 && group == 2) return attend_fixed<4, 2, T>(w, h, sc.data()), true;
  if (w.hd == 128 && group == 2) return attend_fixed<8, 2, T>(w, h, sc.data()), true;
  if (w.hd == 64 && group == 1) return attend_fixed<4, 1, T>(w, h, sc.data()), true;
  return false;
}
#endif

constexpr int64_t CHUNK = 128;  // cache rows per task: 32 KB of V at head_dim 64, re-read per query head from L1/L2

// sc[j * n + u] = scale * q_j · K[t0 + u] for the query heads j of KV head h.
template <typename T>
void chunk_scores(const cg::AttnWork& w, int64_t h, int64_t t0, int64_t n, float* sc) {
  const int64_t group = w.nh / w.nkv, hd = w.hd;
  const T* K = rows<T>(w.kc, w, h, t0);
  int64_t u0 = 0;
#if defined(CG_AVX2)
  if (hd % 8 == 0) {
    const __m256 scale = _mm256_set1_ps(w.scale);
    for (; u0 + 8 <= n; u0 += 8) {  // 8 rows (2 KB at head_dim 64) stay in L1 for every query head
      // two blocks ahead: the hardware prefetcher stops at each 4 KB page, a chunk of K spans 8 of them
      prefetch(K + (u0 + 16) * hd, 8 * hd * int64_t(sizeof(T)));
      for (int64_t j = 0; j < group; ++j) {
        const float* q = w.q + (h * group + j) * hd;
        __m256 a[8];
        for (int u = 0; u < 8; ++u) {
          const T* k = K + (u0 + u) * hd;
          a[u] = _mm256_mul_ps(_mm256_loadu_ps(q), load8(k));
          for (int64_t d = 8; d < hd; d += 8) a[u] = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k + d), a[u]);
        }
        _mm256_storeu_ps(sc + j * n + u0, _mm256_mul_ps(sum8x8(a), scale));
      }
    }
  }
#elif defined(CG_NEON)
  if (hd % 8 == 0) {
    for (; u0 < n; ++u0) {
      const T* k = K + u0 * hd;
      __builtin_prefetch(k + 4 * hd);
      for (int64_t j = 0; j < group; ++j) {
        const float* q = w.q + (h * group + j) * hd;
        float32x4_t a0 = vmulq_f32(vld1q_f32(q), load4(k)), a1 = vmulq_f32(vld1q_f32(q + 4), load4(k + 4));
        for (int64_t d = 8; d < hd; d += 8) {
          a0 = vfmaq_f32(a0, vld1q_f32(q + d), load4(k + d));
          a1 = vfmaq_f32(a1, vld1q_f32(q + d + 4), load4(k + d + 4));
        }
        sc[j * n + u0] = vaddvq_f32(vaddq_f32(a0, a1)) * w.scale;
      }
    }
  }
#endif
  for (int64_t j = 0; j < group; ++j) {
    const float* q = w.q + (h * group + j) * hd;
    for (int64_t u = u0; u < n; ++u) {
      float acc = 0;
      for (int64_t d = 0; d < hd; ++d) acc += q[d] * load1(K + u * hd + d);
      sc[j * n + u] = acc * w.scale;
    }
  }
}

// s[u] = exp(s[u] - mx); returns their sum.
float exp_sum(float* s, int64_t n, float mx) {
  float sum = 0;
  int64_t u = 0;
#if defined(CG_AVX2)
  __m256 vs = _mm256_setzero_ps();
  const __m256 vm = _mm256_set1_ps(mx);
  for (; u + 8 <= n; u += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + u), vm));
    _mm256_storeu_ps(s + u, e);
    vs = _mm256_add_ps(vs, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vs);
  for (float x : lanes) sum += x;
#elif defined(CG_NEON)
  float32x4_t vs = vdupq_n_f32(0);
  const float32x4_t vm = vdupq_n_f32(mx);
  for (; u + 4 <= n; u += 4) {
    const float32x4_t e = exp4(vsubq_f32(vld1q_f32(s + u), vm));
    vst1q_f32(s + u, e);
    vs = vaddq_f32(vs, e);
  }
  sum = vaddvq_f32(vs);
#endif
  for (; u < n; ++u) {
    s[u] = std::exp(s[u] - mx);
    sum += s[u];
  }
  return sum;
}

// o[0 .. hd) = Σ_u p[u] · V[t0 + u] for KV head h.
template <typename T>
void chunk_values(const cg::AttnWork& w, int64_t h, int64_t t0, int64_t n, const float* p, float* o) {
  const int64_t hd = w.hd;
  const T* V = rows<T>(w.vc, w, h, t0);
#if defined(CG_AVX2)
  if (hd == 64 || hd == 128) {  // the accumulators stay in registers (8 or 16 of the 16)
    __m256 acc[16];
    const int D = int(hd / 8);
    for (int d = 0; d < D; ++d) acc[d] = _mm256_setzero_ps();
    for (int64_t u = 0; u < n; ++u) {
      prefetch(V + (u + 8) * hd, hd * int64_t(sizeof(T)));
      const __m256 pu = _mm256_broadcast_ss(p + u);
      const T* v = V + u * hd;
      for (int d = 0; d < D; ++d) acc[d] = _mm256_fmadd_ps(pu, load8(v + 8 * d), acc[d]);
    }
    for (int d = 0; d < D; ++d) _mm256_storeu_ps(o + 8 * d, acc[d]);
    return;
  }
#elif defined(CG_NEON)
  if (hd == 64 || hd == 128) {  // 16 or 32 of the 32 vector registers
    float32x4_t acc[32];
    const int D = int(hd / 4);
    for (int d = 0; d < D; ++d) acc[d] = vdupq_n_f32(0);
    for (int64_t u = 0; u < n; ++u) {
      const T* v = V + u * hd;
      __builtin_prefetch(v + 4 * hd);
      for (int d = 0; d < D; ++d) acc[d] = vfmaq_n_f32(acc[d], load4(v + 4 * d), p[u]);
    }
    for (int d = 0; d < D; ++d) vst1q_f32(o + 4 * d, acc[d]);
    return;
  }
#endif
  std::fill(o, o + hd, 0.0f);
  for (int64_t u = 0; u < n; ++u) {
    const float pu = p[u];
    const T* v = V + u * hd;
    for (int64_t d = 0; d < hd; ++d) o[d] += pu * load1(v + d);  // no reduction across lanes
  }
}

struct Split {
  const cg::AttnWork* w;
  int64_t chunks, group;
  float* part;  // per task: [group][hd] unnormalised outputs, then [group] maxima, then [group] sums
  int64_t stride() const { return group * (w->hd + 2); }
};

template <typename T>
void attend_chunk(const Split& s, int64_t task) {
  const cg::AttnWork& w = *s.w;
  const int64_t h = task / s.chunks, t0 = (task % s.chunks) * CHUNK, n = std::min(CHUNK, w.len - t0);
  thread_local std::vector<float> sc;
  sc.resize(static_cast<size_t>(s.group * n));
  chunk_scores<T>(w, h, t0, n, sc.data());
  float* o = s.part + task * s.stride();
  float* mx = o + s.group * w.hd;
  for (int64_t j = 0; j < s.group; ++j) {
    float* p = sc.data() + j * n;
    mx[j] = *std::max_element(p, p + n);
    mx[s.group + j] = exp_sum(p, n, mx[j]);
    chunk_values<T>(w, h, t0, n, p, o + j * w.hd);
  }
}

// out_j = Σ_c e^(m_c - M) o_c / Σ_c e^(m_c - M) l_c, M = max_c m_c: the exact softmax over the whole cache.
void merge(const Split& s, int64_t h) {
  const cg::AttnWork& w = *s.w;
  for (int64_t j = 0; j < s.group; ++j) {
    const float* first = s.part + h * s.chunks * s.stride();
    float M = -INFINITY, L = 0;
    for (int64_t c = 0; c < s.chunks; ++c) M = std::max(M, first[c * s.stride() + s.group * w.hd + j]);
    float* out = w.out + (h * s.group + j) * w.hd;
    std::fill(out, out + w.hd, 0.0f);
    for (int64_t c = 0; c < s.chunks; ++c) {
      const float* o = first + c * s.stride();
      const float f = std::exp(o[s.group * w.hd + j] - M);
      L += f * o[s.group * w.hd + s.group + j];
      for (int64_t d = 0; d < w.hd; ++d) out[d] += f * o[j * w.hd + d];
    }
    const float inv = 1.0f / L;
    for (int64_t d = 0; d < w.hd; ++d) out[d] *= inv;
  }
}

template <typename T>
void attend_as(Ort::KernelContext& ctx, const cg::AttnWork& w) {
  const int64_t group = w.nh / w.nkv;
#if defined(__AVX512F__)
  const bool fixed = w.hd == 64 ? (group >= 1 && group <= 4) : (w.hd == 128 && group == 2);  // attend_fixed_any's
  if (fixed) {
    ctx.ParallelFor([](void* u, size_t h) { attend_fixed_any<T>(*static_cast<const cg::AttnWork*>(u), int64_t(h)); },
                    static_cast<size_t>(w.nkv), 0, const_cast<cg::AttnWork*>(&w));
    return;
  }
#endif
  Split s{&w, (w.len + CHUNK - 1) / CHUNK, group, nullptr};
  std::vector<float> part(static_cast<size_t>(w.nkv * s.chunks * s.stride()));
  s.part = part.data();
  ctx.ParallelFor([](void* u, size_t i) { attend_chunk<T>(*static_cast<Split*>(u), int64_t(i)); },
                  static_cast<size_t>(w.nkv * s.chunks), 0, &s);
  for (int64_t h = 0; h < w.nkv; ++h) merge(s, h);
}

}  // namespace

namespace cg {

void attend(Ort::KernelContext& ctx, const AttnWork& w) {
  if (w.f16) return attend_as<half_t>(ctx, w);
  attend_as<float>(ctx, w);
}

}  // namespace cg
