// CoGenesis Edge kernels: an exact GGUF Q4_1 MatMul as an onnxruntime custom op.
//
// Why hand-written: onnxruntime has no fast kernel for Q4_1 with fp32 activations. Its MatMulNBits either
// quantizes activations to int8 (fast, ~0.97 top-1 agreement with the GGUF model) or, with fp32 activations,
// runs ~3x slower, and the Q4_1 min term costs one more MatMul per linear. This op does
//     Y = A @ W,  W[k, n] = d[n, b] * (q[n, k] - 8) + c[b, n],  b = k / 32
// (c = m + 8d: the same initializers the portable graph's MatMulNBits + MinTerm + Add use) in one pass over
// the 4-bit codes, fp32 throughout. Decode (up to 8 rows) streams the codes once; prefill dequantizes a panel
// of 32 columns into L2 and runs a register-blocked GEMM (6 rows x 32 columns) on it.
//
// Built by `cogenesis kernels build` (runtime/kernels.py) against onnxruntime's C/C++ API headers.
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

constexpr int64_t BLK = 32;  // GGUF block along K
constexpr int64_t G = 16;    // output columns per group (one AVX-512 register of floats)

// Codes re-laid for column-vector access, one record per (group g of 16 columns, block b of 32 rows):
//   256 bytes of codes: pair i (rows 2i, 2i+1), column j at byte 16*i + j, low nibble = row 2i
//                       (MatMulNBits stores the same nibble pair per byte, per column);
//   16 x fp16 d, 16 x fp16 m (GGUF keeps both as fp16; c = m + 8d is recomputed in fp32, checked at pack).
// One sequential stream per group: 0.625 bytes per weight, what the hardware prefetcher likes best.
constexpr int64_t REC = 256 + 2 * G * 2;

using Packed = cg::Records;

// Returns false when a scale or minimum is not an fp16 value (not a GGUF Q4_1 weight): the caller refuses.
bool pack(const uint8_t* B, const float* scales, const float* blockmin, int64_t K, int64_t N, Packed& p) {
  p.init(K, N, REC);
  for (int64_t g = 0; g < N / G; ++g)
    for (int64_t b = 0; b < p.nb; ++b) {
      uint8_t* r = p.at(g, b);
      uint16_t* dh = reinterpret_cast<uint16_t*>(r + 256);
      uint16_t* mh = dh + G;
      for (int64_t j = 0; j < G; ++j) {
        const int64_t n = g * G + j;
        const uint8_t* src = B + (n * p.nb + b) * 16;
        for (int64_t i = 0; i < 16; ++i) r[i * G + j] = src[i];
        const float d = scales[n * p.nb + b], c = blockmin[b * N + n];
        const float m = c - 8.0f * d;
        const uint16_t hd = cg::to_half(d), hm = cg::to_half(m);
        if (cg::from_half(hd) != d || cg::from_half(hm) + 8.0f * cg::from_half(hd) != c) return false;
        dh[j] = hd;
        mh[j] = hm;
      }
    }
  return true;
}

#if defined(__AVX512F__)
inline __m512 lut() { return _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7); }
inline __m512i codes(const uint8_t* r, int i) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + i * G)));
}
inline __m512 half16(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// sum over one record of (q - 8) * x, 16 columns
inline __m512 block_dot(const uint8_t* r, const float* xb, __m512 t) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  for (int i = 0; i < 16; ++i) {
    const __m512i v = codes(r, i);
    // vpermps reads only the low 4 bits of each index: the low nibble needs no mask
    a0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(v, t), _mm512_set1_ps(xb[2 * i]), a0);
    a1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), t), _mm512_set1_ps(xb[2 * i + 1]), a1);
  }
  return _mm512_add_ps(a0, a1);
}

// y[g*16 ..] for groups [g0, g1) of one row x (K floats), s: the nb block sums of x.
void gemv(const Packed& p, const float* x, const float* s, float* y, int64_t g0, int64_t g1) {
  const __m512 t = lut(), eight = _mm512_set1_ps(8.0f);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* r = p.at(g, 0);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < p.nb; ++b, r += REC) {
      _mm_prefetch(reinterpret_cast<const char*>(r + 4 * REC), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(r + 4 * REC + 64), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(r + 4 * REC + 128), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(r + 4 * REC + 192), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(r + 4 * REC + 256), _MM_HINT_T0);
      const __m512 d = half16(r + 256), c = _mm512_fmadd_ps(eight, d, half16(r + 256 + 2 * G));
      acc = _mm512_fmadd_ps(block_dot(r, x + b * BLK, t), d, acc);
      acc = _mm512_fmadd_ps(c, _mm512_set1_ps(s[b]), acc);
    }
    _mm512_storeu_ps(y + g * G, acc);
  }
}


// Dequantize groups [g, g + ng) into panel[K][ng*16] (w = d*(q-8) + c).
void dequant(const Packed& p, int64_t g, int64_t ng, float* panel) {
  const __m512 t = lut(), eight = _mm512_set1_ps(8.0f);
  const int64_t ld = ng * G;
  for (int64_t h = 0; h < ng; ++h) {
    const uint8_t* r = p.at(g + h, 0);
    for (int64_t b = 0; b < p.nb; ++b, r += REC) {
      const __m512 d = half16(r + 256), c = _mm512_fmadd_ps(eight, d, half16(r + 256 + 2 * G));
      for (int i = 0; i < 16; ++i) {
        const __m512i v = codes(r, i);
        float* row = panel + (b * BLK + 2 * i) * ld + h * G;
        _mm512_storeu_ps(row, _mm512_fmadd_ps(_mm512_permutexvar_ps(v, t), d, c));
        _mm512_storeu_ps(row + ld, _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), t), d, c));
      }
    }
  }
}


// Y[rows, g*16 : (g+2)*16] = A[rows] @ panel (two groups), 6 rows at a time (12 accumulators).
void panel_gemm2(const float* panel, int64_t K, const float* A, int64_t lda, int64_t M, float* Y, int64_t ldy) {
  int64_t m = 0;
  for (; m + 6 <= M; m += 6) {
    __m512 r[6][2];
    for (int i = 0; i < 6; ++i) r[i][0] = r[i][1] = _mm512_setzero_ps();
    const float* a = A + m * lda;
    for (int64_t k = 0; k < K; ++k) {
      const __m512 w0 = _mm512_loadu_ps(panel + k * 2 * G), w1 = _mm512_loadu_ps(panel + k * 2 * G + G);
      for (int i = 0; i < 6; ++i) {
        const __m512 x = _mm512_set1_ps(a[i * lda + k]);
        r[i][0] = _mm512_fmadd_ps(w0, x, r[i][0]);
        r[i][1] = _mm512_fmadd_ps(w1, x, r[i][1]);
      }
    }
    for (int i = 0; i < 6; ++i) {
      _mm512_storeu_ps(Y + (m + i) * ldy, r[i][0]);
      _mm512_storeu_ps(Y + (m + i) * ldy + G, r[i][1]);
    }
  }
  for (; m < M; ++m) {
    __m512 r0 = _mm512_setzero_ps(), r1 = r0;
    const float* a = A + m * lda;
    for (int64_t k = 0; k < K; ++k) {
      const __m512 x = _mm512_set1_ps(a[k]);
      r0 = _mm512_fmadd_ps(_mm512_loadu_ps(panel + k * 2 * G), x, r0);
      r1 = _mm512_fmadd_ps(_mm512_loadu_ps(panel + k * 2 * G + G), x, r1);
    }
    _mm512_storeu_ps(Y + m * ldy, r0);
    _mm512_storeu_ps(Y + m * ldy + G, r1);
  }
}
#else
// Portable path (ARM, AVX2 machines): the same loops in plain C++, written so that -O3 vectorizes them.
void gemv(const Packed& p, const float* x, const float* s, float* y, int64_t g0, int64_t g1) {
  for (int64_t g = g0; g < g1; ++g) {
    float acc[G] = {0};
    for (int64_t b = 0; b < p.nb; ++b) {
      const uint8_t* q = p.at(g, b);
      const uint16_t* dh = reinterpret_cast<const uint16_t*>(q + 256);
      const float* xb = x + b * BLK;
      float a[G] = {0};
      for (int i = 0; i < 16; ++i)
        for (int j = 0; j < G; ++j)
          a[j] += float(int(q[i * G + j] & 15) - 8) * xb[2 * i] + float(int(q[i * G + j] >> 4) - 8) * xb[2 * i + 1];
      for (int j = 0; j < G; ++j) {
        const float d = cg::from_half(dh[j]), c = cg::from_half(dh[G + j]) + 8.0f * d;
        acc[j] += a[j] * d + c * s[b];
      }
    }
    std::memcpy(y + g * G, acc, sizeof(acc));
  }
}


void dequant(const Packed& p, int64_t g, int64_t ng, float* panel) {
  const int64_t ld = ng * G;
  for (int64_t h = 0; h < ng; ++h)
    for (int64_t b = 0; b < p.nb; ++b) {
      const uint8_t* q = p.at(g + h, b);
      const uint16_t* dh = reinterpret_cast<const uint16_t*>(q + 256);
      for (int j = 0; j < G; ++j) {
        const float d = cg::from_half(dh[j]), c = cg::from_half(dh[G + j]) + 8.0f * d;
        for (int i = 0; i < 16; ++i) {
          float* row = panel + (b * BLK + 2 * i) * ld + h * G;
          row[j] = d * float(int(q[i * G + j] & 15) - 8) + c;
          row[ld + j] = d * float(int(q[i * G + j] >> 4) - 8) + c;
        }
      }
    }
}

void panel_gemm2(const float* panel, int64_t K, const float* A, int64_t lda, int64_t M, float* Y, int64_t ldy) {
  for (int64_t m = 0; m < M; ++m) {
    float r[2 * G] = {0};
    const float* a = A + m * lda;
    for (int64_t k = 0; k < K; ++k)
      for (int j = 0; j < 2 * G; ++j) r[j] += panel[k * 2 * G + j] * a[k];
    std::memcpy(Y + m * ldy, r, sizeof(r));
  }
}
#endif

constexpr int64_t SMALL_M = 8;  // up to this many rows, streaming the codes per row beats a panel

// Prefill: for row tiles of ROWS (kept in L2) x group pairs, dequantize a K x 32 panel once, GEMM the tile.
// Measured on a 1.5k-token prompt: 5.4 s against 6.2 s for MatMulNBits (prepacked, fp32 activations) and
// 6.6 s for MatMulNBits through InvokeOp (it dequantizes and packs the whole weight per call).
constexpr int64_t ROWS = 256;

void gemm(const Packed& p, const float* A, int64_t M, float* Y, int64_t pair0, int64_t pair1,
          std::vector<float>& panel) {
  panel.resize(static_cast<size_t>(p.K * 2 * G));
  const int64_t ngroups = p.N / G;
  for (int64_t gp = pair0; gp < pair1; ++gp) {
    const int64_t g = gp * 2, ng = std::min<int64_t>(2, ngroups - g);
    if (ng == 2) {
      dequant(p, g, 2, panel.data());
      for (int64_t m0 = 0; m0 < M; m0 += ROWS)
        panel_gemm2(panel.data(), p.K, A + m0 * p.K, p.K, std::min(ROWS, M - m0), Y + m0 * p.N + g * G, p.N);
    } else {  // an odd last group: plain loops
      dequant(p, g, 1, panel.data());
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < G; ++j) {
          float r = 0;
          for (int64_t k = 0; k < p.K; ++k) r += panel[k * G + j] * A[m * p.K + k];
          Y[m * p.N + g * G + j] = r;
        }
    }
  }
}


struct Q41Kernel {
  Packed p;

  Q41Kernel(const OrtApi&, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    int64_t K, N;
    cg::linear_shape(ki, "Q4_1MatMul", K, N);
    int c1 = 0, c2 = 0, c3 = 0;
    Ort::ConstValue B = ki.GetTensorConstantInput(1, &c1);
    Ort::ConstValue S = ki.GetTensorConstantInput(2, &c2);
    Ort::ConstValue C = ki.GetTensorConstantInput(3, &c3);
    if (!c1 || !c2 || !c3)
      ORT_CXX_API_THROW("Q4_1MatMul: codes, scales and block minima must be initializers", ORT_INVALID_ARGUMENT);
    const auto nq = B.GetTensorTypeAndShapeInfo().GetElementCount();
    const auto nd = S.GetTensorTypeAndShapeInfo().GetElementCount();
    const auto nc = C.GetTensorTypeAndShapeInfo().GetElementCount();
    if (int64_t(nq) != N * K / 2 || int64_t(nd) != N * K / BLK || int64_t(nc) != N * K / BLK)
      ORT_CXX_API_THROW("Q4_1MatMul: initializer sizes do not match K=" + std::to_string(K) + " N=" +
                            std::to_string(N), ORT_INVALID_ARGUMENT);
    if (!pack(B.GetTensorData<uint8_t>(), S.GetTensorData<float>(), C.GetTensorData<float>(), K, N, p))
      ORT_CXX_API_THROW("Q4_1MatMul: scales/minima are not fp16 values (not a GGUF Q4_1 weight); use the portable "
                        "model.onnx", ORT_INVALID_ARGUMENT);
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::UnownedValue y{nullptr};
    const int64_t M = cg::linear_rows(ctx, p.K, p.N, "Q4_1MatMul", y);
    const float* A = ctx.GetInput(0).GetTensorData<float>();
    float* Y = y.GetTensorMutableData<float>();
    if (M == 0) return;
    if (M <= SMALL_M) {  // decode (and short blocks): stream each group's codes once, for every row
      std::vector<float> s(static_cast<size_t>(M * p.nb));
      for (int64_t m = 0; m < M; ++m)
        for (int64_t b = 0; b < p.nb; ++b) {
          float t = 0;
          for (int64_t j = 0; j < BLK; ++j) t += A[m * p.K + b * BLK + j];
          s[m * p.nb + b] = t;
        }
      cg::parallel_chunks(ctx, p.N / G, 8, [&](int64_t g0, int64_t g1) {
        for (int64_t g = g0; g < g1; ++g)  // the group's records stay in L1 across rows
          for (int64_t m = 0; m < M; ++m) gemv(p, A + m * p.K, s.data() + m * p.nb, Y + m * p.N, g, g + 1);
      });
      return;
    }
    // prefill: dequantize a K x 32 panel per column pair, GEMM the rows against it
    cg::parallel_chunks(ctx, (p.N / G + 1) / 2, 4, [&](int64_t p0, int64_t p1) {
      thread_local std::vector<float> panel;
      gemm(p, A, M, Y, p0, p1, panel);
    });
  }
};

constexpr char kQ41OpName[] = "Q4_1MatMul";
const cg::LinearOp<Q41Kernel, kQ41OpName, 4> kOp;

}  // namespace

const OrtCustomOp* q41_matmul_op() { return &kOp; }

