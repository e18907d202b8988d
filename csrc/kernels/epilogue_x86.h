// Vectorized epilogues shared by the x86 kernels. Same float32 operations, in
// the same order, as sqfx::epilogue (kernels.h) and sqfx.reference:
//   y = float(acc - zp * w_sum) * (a_scale * w_scale) + bias, then ReLU.
// acc - zp * w_sum is computed with wrapping int32 ops; its true value fits in
// int32 below kMaxInt32InFeatures, so the wrapped result is exact.
#pragma once
#include <immintrin.h>

#include <cstring>

#include "kernels.h"

namespace sqfx {
namespace x86 {

// 8 consecutive outputs n0..n0+7 of one input row (n-direction epilogue).
// Writes only the first `count` of them.
__attribute__((target("avx2,fma"))) inline void epilogue_n8(
    __m256i acc, int32_t zp, float a_scale, const BsrWeight& w, int64_t n0,
    int64_t count, bool relu, float* y) {
  if (count < 8) {
    alignas(32) int32_t a[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(a), acc);
    for (int64_t r = 0; r < count; ++r) {
      y[n0 + r] = epilogue(a[r], zp, w.w_sum[n0 + r], a_scale, w.w_scale[n0 + r],
                           w.bias, n0 + r, relu);
    }
    return;
  }
  __m256i wsum = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.w_sum + n0));
  __m256i corr = _mm256_sub_epi32(acc, _mm256_mullo_epi32(_mm256_set1_epi32(zp), wsum));
  __m256 s = _mm256_mul_ps(_mm256_set1_ps(a_scale), _mm256_loadu_ps(w.w_scale + n0));
  __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(corr), s);
  if (w.bias) v = _mm256_add_ps(v, _mm256_loadu_ps(w.bias + n0));
  if (relu) {
    __m256 zero = _mm256_setzero_ps();
    v = _mm256_blendv_ps(v, zero, _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
  }
  _mm256_storeu_ps(y + n0, v);
}

// One output row's epilogue scalars, read once per row. The m-direction
// epilogues below take them by value: reading w.w_sum[n] etc. after a vector
// store made the compiler reload the pointers from BsrWeight (an intrinsic
// store may alias anything), a store-to-load chain per row that the token-batch
// GEMM's profile showed as its largest stall.
struct OutRow {
  int32_t w_sum;
  float w_scale;
  float bias;
  bool has_bias;
};

inline OutRow out_row(const int32_t* w_sum, const float* w_scale, const float* bias, int64_t n) {
  return OutRow{w_sum[n], w_scale[n], bias ? bias[n] : 0.0f, bias != nullptr};
}

inline OutRow out_row(const BsrWeight& w, int64_t n) { return out_row(w.w_sum, w.w_scale, w.bias, n); }

// 8 consecutive input rows m0..m0+7 of one output n (m-direction epilogue);
// zp / a_scale point at row m0. Returns the 8 outputs.
__attribute__((target("avx2,fma"))) inline __m256 epilogue_m8_vec(
    __m256i acc, const int32_t* zp, const float* a_scale, const OutRow& o, bool relu) {
  __m256i corr = _mm256_sub_epi32(
      acc, _mm256_mullo_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(zp)),
                              _mm256_set1_epi32(o.w_sum)));
  __m256 s = _mm256_mul_ps(_mm256_loadu_ps(a_scale), _mm256_set1_ps(o.w_scale));
  __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(corr), s);
  if (o.has_bias) v = _mm256_add_ps(v, _mm256_set1_ps(o.bias));
  if (relu) {
    __m256 zero = _mm256_setzero_ps();
    v = _mm256_blendv_ps(v, zero, _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
  }
  return v;
}

__attribute__((target("avx2,fma"))) inline __m256 epilogue_m8_vec(
    __m256i acc, const int32_t* zp, const float* a_scale, const BsrWeight& w, int64_t n,
    bool relu) {
  return epilogue_m8_vec(acc, zp, a_scale, out_row(w, n), relu);
}

// As epilogue_m8_vec; writes dst[l * ld] for l < count.
__attribute__((target("avx2,fma"))) inline void epilogue_m8(
    __m256i acc, const int32_t* zp, const float* a_scale, const BsrWeight& w,
    int64_t n, int64_t count, bool relu, float* dst, int64_t ld) {
  alignas(32) float t[8];
  _mm256_store_ps(t, epilogue_m8_vec(acc, zp, a_scale, w, n, relu));
  for (int64_t l = 0; l < count; ++l) dst[l * ld] = t[l];
}

// Panel kernels produce one output column (n) of many input rows at a time;
// written straight to out that is one cache line per value. They fill a tile
// of kTileN columns x mc rows instead and copy whole row pieces out.
constexpr int64_t kTileN = 16;

inline void flush_tile(const float* tile, int64_t rows, int64_t n0, int64_t count,
                       int64_t N, float* out_m0) {
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(out_m0 + r * N + n0, tile + r * kTileN, count * sizeof(float));
}

__attribute__((target("avx2,fma"))) inline int32_t hsum8(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// Loads 8 block column indices as int32, clamps them into [0, n_cb) so a bad
// one is never used as an address, and ORs any difference into *bad.
template <typename Index>
__attribute__((target("avx2,fma"))) inline __m256i load_idx8(
    const Index* idx, __m256i max_idx, __m256i* bad) {
  __m256i i;
  if constexpr (sizeof(Index) == 2) {
    i = _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx)));
  } else {
    i = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx));
  }
  __m256i c = _mm256_min_epi32(_mm256_max_epi32(i, _mm256_setzero_si256()), max_idx);
  *bad = _mm256_or_si256(*bad, _mm256_xor_si256(i, c));
  return c;
}

__attribute__((target("avx2,fma"))) inline bool any_bits(__m256i v) {
  return !_mm256_testz_si256(v, v);
}

// A block column index in range? (one compare: negative -> huge unsigned)
inline bool col_ok(int64_t col, int64_t n_cb) {
  return static_cast<uint64_t>(col) < static_cast<uint64_t>(n_cb);
}

}  // namespace x86
}  // namespace sqfx

namespace sqfx {
namespace x86 {

// Inclusive prefix sum of the 8 int32 lanes (wrapping), plus carry (a
// broadcast vector). Wrapping is fine: only differences of prefix sums that
// fit in int32 (one row's accumulator) are used.
__attribute__((target("avx2,fma"))) inline __m256i scan8(__m256i x, __m256i carry) {
  x = _mm256_add_epi32(x, _mm256_slli_si256(x, 4));
  x = _mm256_add_epi32(x, _mm256_slli_si256(x, 8));
  // add lane 3 (end of the low half) to the high half
  __m256i low_total = _mm256_permutevar8x32_epi32(x, _mm256_set1_epi32(3));
  x = _mm256_add_epi32(x, _mm256_blend_epi32(_mm256_setzero_si256(), low_total, 0xF0));
  return _mm256_add_epi32(x, carry);
}

// dst[r * ldd + c] = src[c * lds + r] for an 8 x 8 float block.
__attribute__((target("avx2,fma"))) inline void transpose8x8(const float* src, int64_t lds,
                                                            float* dst, int64_t ldd) {
  __m256 r[8], a[8], b[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 4; ++i) {
    a[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    b[4 * i + 0] = _mm256_shuffle_ps(a[4 * i], a[4 * i + 2], 0x44);
    b[4 * i + 1] = _mm256_shuffle_ps(a[4 * i], a[4 * i + 2], 0xEE);
    b[4 * i + 2] = _mm256_shuffle_ps(a[4 * i + 1], a[4 * i + 3], 0x44);
    b[4 * i + 3] = _mm256_shuffle_ps(a[4 * i + 1], a[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(b[i], b[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(b[i], b[i + 4], 0x31));
  }
}

__attribute__((target("avx2,fma"))) inline __m256i last_lane(__m256i x) {
  return _mm256_permutevar8x32_epi32(x, _mm256_set1_epi32(7));
}

}  // namespace x86
}  // namespace sqfx

namespace sqfx {
namespace x86 {

// 16 input rows of one output n (m-direction epilogue, AVX-512); zp / a_scale
// point at the first row. Returns the 16 outputs.
__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl"))) inline __m512 epilogue_m16_avx512(
    __m512i acc, const int32_t* zp, const float* a_scale, const OutRow& o, bool relu) {
  __m512i corr = _mm512_sub_epi32(
      acc, _mm512_mullo_epi32(_mm512_loadu_si512(zp), _mm512_set1_epi32(o.w_sum)));
  __m512 s = _mm512_mul_ps(_mm512_loadu_ps(a_scale), _mm512_set1_ps(o.w_scale));
  __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(corr), s);
  if (o.has_bias) v = _mm512_add_ps(v, _mm512_set1_ps(o.bias));
  if (relu) {
    __m512 zero = _mm512_setzero_ps();
    v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), v, zero);
  }
  return v;
}

__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl"))) inline __m512 epilogue_m16_avx512(
    __m512i acc, const int32_t* zp, const float* a_scale, const BsrWeight& w, int64_t n,
    bool relu) {
  return epilogue_m16_avx512(acc, zp, a_scale, out_row(w, n), relu);
}

// As epilogue_m16_avx512; writes dst[l * kTileN] for l < count (a column of a tile).
__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl"))) inline void store_m16_avx512(
    __m512i acc, const int32_t* zp, const float* a_scale, const BsrWeight& w, int64_t n,
    int64_t count, bool relu, float* dst) {
  alignas(64) float t[16];
  _mm512_store_ps(t, epilogue_m16_avx512(acc, zp, a_scale, w, n, relu));
  for (int64_t l = 0; l < count; ++l) dst[l * kTileN] = t[l];
}

// dst[r * ldd + c] = src[c * lds + r] for a 16 x 16 float block.
__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl"))) inline void transpose16x16(
    const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m512 r[16], a[16], b[16], c[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    b[4 * i + 0] = _mm512_shuffle_ps(a[4 * i], a[4 * i + 2], 0x44);
    b[4 * i + 1] = _mm512_shuffle_ps(a[4 * i], a[4 * i + 2], 0xEE);
    b[4 * i + 2] = _mm512_shuffle_ps(a[4 * i + 1], a[4 * i + 3], 0x44);
    b[4 * i + 3] = _mm512_shuffle_ps(a[4 * i + 1], a[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    c[i] = _mm512_shuffle_f32x4(b[i], b[i + 4], 0x88);
    c[i + 4] = _mm512_shuffle_f32x4(b[i], b[i + 4], 0xDD);
    c[8 + i] = _mm512_shuffle_f32x4(b[8 + i], b[12 + i], 0x88);
    c[12 + i] = _mm512_shuffle_f32x4(b[8 + i], b[12 + i], 0xDD);
  }
  for (int i = 0; i < 8; ++i) {
    _mm512_storeu_ps(dst + i * ldd, _mm512_shuffle_f32x4(c[i], c[8 + i], 0x88));
    _mm512_storeu_ps(dst + (8 + i) * ldd, _mm512_shuffle_f32x4(c[i], c[8 + i], 0xDD));
  }
}

}  // namespace x86
}  // namespace sqfx
