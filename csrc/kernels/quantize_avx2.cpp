// AVX2 (and AVX-512, `wide`) twins of quantize_rows (quantize_rows.cpp): the same single float32
// operations in the same order (min/max, range * (1/255), 1 / scale,
// round-half-even, clamp), so every byte, scale and zero point is identical to
// the scalar code and to sqfx.reference.quantize_rows. Also writes the panel
// layout of the large-M kernels directly (fused quantize + pack).
#include "kernels.h"
#include "epilogue_x86.h"  // x86::transpose8x8

#include <immintrin.h>
#include <algorithm>
#include <cfloat>

#include <cmath>
#include <cstring>
#include <vector>

namespace sqfx {

namespace {

struct RowParams {
  bool finite;
  float scale, inv, z;
};

// Scale, 1 / scale and zero point of a row from its range (min and max with 0 included).
RowParams params_from_range(float lo, float hi, bool finite) {
  RowParams p{};
  const float range = hi - lo;
  p.finite = finite && std::isfinite(range);
  if (!p.finite) return p;
  constexpr float kInv255 = 1.0f / 255.0f;
  // Clamped like quantize_rows.cpp: a subnormal scale would make 1/scale Inf (UB in the casts).
  p.scale = range > 0.0f ? std::max(range * kInv255, FLT_MIN) : 1.0f;
  p.inv = 1.0f / p.scale;
  float z = std::nearbyintf(-lo * p.inv);
  p.z = z < 0.0f ? 0.0f : (z > 255.0f ? 255.0f : z);
  return p;
}

__attribute__((target("avx2,fma"))) RowParams row_params(const float* row,
                                                          int64_t K) {
  __m256 mn = _mm256_setzero_ps(), mx = _mm256_setzero_ps();
  __m256 fin = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  const __m256 zero = _mm256_setzero_ps();
  int64_t k = 0;
  if (K >= 32) {
    // Four independent min / max / finite chains (one chain is latency-bound);
    // min and max are exact and order-free for the finite rows that use them.
    __m256 mn4[4], mx4[4], fin4[4];
    for (int i = 0; i < 4; ++i) mn4[i] = mx4[i] = zero, fin4[i] = fin;
    for (; k + 32 <= K; k += 32) {
      for (int i = 0; i < 4; ++i) {
        __m256 v = _mm256_loadu_ps(row + k + 8 * i);
        fin4[i] = _mm256_and_ps(fin4[i], _mm256_cmp_ps(_mm256_mul_ps(v, zero), zero, _CMP_EQ_OQ));
        mn4[i] = _mm256_min_ps(mn4[i], v);
        mx4[i] = _mm256_max_ps(mx4[i], v);
      }
    }
    for (int i = 0; i < 4; ++i) {
      mn = _mm256_min_ps(mn, mn4[i]);
      mx = _mm256_max_ps(mx, mx4[i]);
      fin = _mm256_and_ps(fin, fin4[i]);
    }
  }
  for (; k + 8 <= K; k += 8) {
    __m256 v = _mm256_loadu_ps(row + k);
    // v * 0 == 0 exactly when v is finite (NaN and +-Inf give NaN).
    fin = _mm256_and_ps(fin, _mm256_cmp_ps(_mm256_mul_ps(v, zero), zero, _CMP_EQ_OQ));
    mn = _mm256_min_ps(mn, v);
    mx = _mm256_max_ps(mx, v);
  }
  float mnv[8], mxv[8];
  _mm256_storeu_ps(mnv, mn);
  _mm256_storeu_ps(mxv, mx);
  bool finite = _mm256_movemask_ps(fin) == 0xff;
  float lo = 0.0f, hi = 0.0f;
  for (int i = 0; i < 8; ++i) {
    lo = mnv[i] < lo ? mnv[i] : lo;
    hi = mxv[i] > hi ? mxv[i] : hi;
  }
  for (; k < K; ++k) {
    float v = row[k];
    finite &= std::isfinite(v);
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  return params_from_range(lo, hi, finite);
}

// 8 values: clamp(round(v * inv) + z, 0, 255) as int32.
__attribute__((target("avx2,fma"))) inline __m256i q8(const float* src, __m256 inv,
                                                      __m256 z) {
  __m256 v = _mm256_mul_ps(_mm256_loadu_ps(src), inv);
  v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  v = _mm256_add_ps(v, z);
  v = _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(255.0f));
  return _mm256_cvtps_epi32(v);  // exact: v is an integer in [0, 255]
}

// q[k] = clamp(round(row[k] * inv) + z, 0, 255) ^ flip for k < K.
__attribute__((target("avx2,fma"))) void quantize_values(const float* row,
                                                         int64_t K,
                                                         const RowParams& p,
                                                         uint8_t* q, uint8_t flip = 0) {
  const __m256i flip8 = _mm256_set1_epi8(static_cast<char>(flip));
  const __m256 inv = _mm256_set1_ps(p.inv), z = _mm256_set1_ps(p.z);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m256i a = q8(row + k, inv, z), b = q8(row + k + 8, inv, z);
    __m256i c = q8(row + k + 16, inv, z), d = q8(row + k + 24, inv, z);
    __m256i ab = _mm256_packus_epi32(a, b), cd = _mm256_packus_epi32(c, d);
    __m256i bytes = _mm256_packus_epi16(ab, cd);
    // packs work per 128-bit lane: dwords come out as a0 b0 c0 d0 a1 b1 c1 d1.
    bytes = _mm256_xor_si256(_mm256_permutevar8x32_epi32(bytes, order), flip8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + k), bytes);
  }
  for (; k < K; ++k) {
    float v = std::nearbyintf(row[k] * p.inv) + p.z;
    v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
    q[k] = static_cast<uint8_t>(v) ^ flip;
  }
}

// AVX-512 twins of row_params / quantize_values (wide = true below; CPUs with the
// avx512vnni path, not when an ISA below it is forced). The same float32 operations: min
// and max are exact and order-free; a row is finite iff the sum of v * 0 over it is not
// NaN (v * 0 is +-0 for finite v and NaN for NaN / +-Inf), one FMA per vector instead of
// AVX2's multiply, compare and and. perf had the AVX2 pair at 35% of a call on an empty
// 384x384 weight at M = 1024.
#define SQFX_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl")))

SQFX_AVX512 RowParams row_params_avx512(const float* row, int64_t K) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 mn[4] = {zero, zero, zero, zero}, mx[4] = {zero, zero, zero, zero};
  __m512 nan_probe = zero;
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    for (int i = 0; i < 4; ++i) {
      const __m512 v = _mm512_loadu_ps(row + k + 16 * i);
      nan_probe = _mm512_fmadd_ps(v, zero, nan_probe);
      mn[i] = _mm512_min_ps(mn[i], v);
      mx[i] = _mm512_max_ps(mx[i], v);
    }
  }
  for (; k < K; k += 16) {  // the tail under a mask (masked-off lanes read as 0: neutral)
    const __mmask16 m = K - k >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (K - k)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(m, row + k);
    nan_probe = _mm512_fmadd_ps(v, zero, nan_probe);
    mn[0] = _mm512_min_ps(mn[0], v);
    mx[0] = _mm512_max_ps(mx[0], v);
  }
  const float lo = _mm512_reduce_min_ps(_mm512_min_ps(_mm512_min_ps(mn[0], mn[1]), _mm512_min_ps(mn[2], mn[3])));
  const float hi = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(mx[0], mx[1]), _mm512_max_ps(mx[2], mx[3])));
  const bool finite = _mm512_cmp_ps_mask(nan_probe, nan_probe, _CMP_UNORD_Q) == 0;
  return params_from_range(lo, hi, finite);
}

// 16 values: round-half-even(v * inv) + z as int32 (the rounding is the conversion's own,
// embedded, so it does not depend on MXCSR). Exact: |v * inv| <= ~256 for a finite row.
SQFX_AVX512 inline __m512i q16_epi32(const float* src, __m512 inv, __m512i zi) {
  const __m512i r = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_loadu_ps(src), inv),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_add_epi32(r, zi);
}

SQFX_AVX512 void quantize_values_avx512(const float* row, int64_t K, const RowParams& p, uint8_t* q,
                                        uint8_t flip = 0) {
  const __m512 inv = _mm512_set1_ps(p.inv), z = _mm512_set1_ps(p.z);
  const __m512 zero = _mm512_setzero_ps(), top = _mm512_set1_ps(255.0f);
  const __m128i flip16 = _mm_set1_epi8(static_cast<char>(flip));
  int64_t k = 0;
  if (K >= 64) {
    // 64 values per step. The int32 results lie in [-1, 256] or so; the unsigned-saturating
    // packs (int32 -> u16 -> u8) clamp them to [0, 255] exactly as the float clamp below does
    // for integers, in 3 shuffles instead of 4 vpmovdb and 8 min / max.
    const __m512i zi = _mm512_set1_epi32(static_cast<int32_t>(p.z));
    const __m512i flip64 = _mm512_set1_epi8(static_cast<char>(flip));
    // packs work per 128-bit lane: dword j of lane l holds values 16 j + 4 l .. + 3
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for (; k + 64 <= K; k += 64) {
      const __m512i a = q16_epi32(row + k, inv, zi), b = q16_epi32(row + k + 16, inv, zi);
      const __m512i c = q16_epi32(row + k + 32, inv, zi), d = q16_epi32(row + k + 48, inv, zi);
      const __m512i bytes = _mm512_packus_epi16(_mm512_packus_epi32(a, b), _mm512_packus_epi32(c, d));
      _mm512_storeu_si512(q + k, _mm512_xor_si512(_mm512_permutexvar_epi32(order, bytes), flip64));
    }
  }
  for (; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + k), inv);
    v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, z), zero), top);
    // exact: v is an integer in [0, 255], so its low byte is the value
    const __m128i bytes = _mm_xor_si128(_mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)), flip16);
    _mm_mask_storeu_epi8(q + k, m, bytes);
  }
}

RowParams row_params_isa(const float* row, int64_t K, bool wide) {
  return wide ? row_params_avx512(row, K) : row_params(row, K);
}

void quantize_values_isa(const float* row, int64_t K, const RowParams& p, uint8_t* q, uint8_t flip,
                         bool wide) {
  if (wide) return quantize_values_avx512(row, K, p, q, flip);
  quantize_values(row, K, p, q, flip);
}

}  // namespace

void quantize_rows_avx2(const float* x, int64_t K, int64_t m_begin,
                        int64_t m_end, const QuantizedRows& out, uint8_t flip, bool wide) {
  for (int64_t m = m_begin; m < m_end; ++m) {
    const float* row = x + m * K;
    uint8_t* q = const_cast<uint8_t*>(out.q) + m * out.ld;
    RowParams p = row_params_isa(row, K, wide);
    if (!p.finite) {
      const_cast<float*>(out.scale)[m] = NAN;
      const_cast<int32_t*>(out.zp)[m] = 0;
      std::memset(q, flip, out.ld);
      continue;
    }
    const_cast<float*>(out.scale)[m] = p.scale;
    const_cast<int32_t*>(out.zp)[m] = static_cast<int32_t>(p.z);
    quantize_values_isa(row, K, p, q, flip, wide);
    std::memset(q + K, static_cast<int>(p.z) ^ flip, out.ld - K);
  }
}

namespace {

// Row m quantized into q (ld bytes: K values, then the zero point as padding).
__attribute__((target("avx2,fma"))) void quantize_panel_row(const float* x, int64_t K, int64_t m,
                                                            int64_t ld, const PanelRows& out, uint8_t* q,
                                                            bool wide) {
  const float* row = x + m * K;
  RowParams p = row_params_isa(row, K, wide);
  if (!p.finite) {
    const_cast<float*>(out.scale)[m] = NAN;
    const_cast<int32_t*>(out.zp)[m] = 0;
    std::memset(q, 0, ld);
    return;
  }
  const_cast<float*>(out.scale)[m] = p.scale;
  const_cast<int32_t*>(out.zp)[m] = static_cast<int32_t>(p.z);
  quantize_values_isa(row, K, p, q, 0, wide);
  std::memset(q + K, static_cast<int>(p.z), ld - K);
}

}  // namespace

// The panel holds, per column group g, the chunk's rows' 4 bytes consecutively.
// Eight rows at a time are quantized into a small buffer and moved with 8 x 8
// dword transposes (one 32-byte store per group and 8 rows); one row at a time
// that was 4-byte stores, one per group and row (the profile of K = 1536,
// M = 2048 had that scatter above the GEMM itself).
__attribute__((target("avx2,fma"))) void quantize_panel_avx2(const float* x, int64_t K, int64_t m_begin,
                                                             int64_t m_end, const PanelRows& out, bool wide) {
  constexpr int64_t R = 8;
  thread_local std::vector<uint8_t> rows_q;
  const int64_t ld = out.groups * 4;
  if (static_cast<int64_t>(rows_q.size()) < R * ld) rows_q.resize(R * ld);
  uint8_t* base = const_cast<uint8_t*>(out.data);
  const int64_t stride = out.mc * 4;  // bytes between groups
  for (int64_t m = m_begin; m < m_end;) {
    uint8_t* dst = base + (m / out.mc) * out.groups * stride + (m % out.mc) * 4;
    // (mc is a multiple of 16, so 8 rows from a multiple of 8 never cross a chunk)
    if (m % R == 0 && m + R <= m_end) {
      for (int64_t r = 0; r < R; ++r) quantize_panel_row(x, K, m + r, ld, out, rows_q.data() + r * ld, wide);
      const float* src = reinterpret_cast<const float*>(rows_q.data());  // dwords moved as floats
      int64_t g = 0;
      for (; g + R <= out.groups; g += R)
        x86::transpose8x8(src + g, ld / 4, reinterpret_cast<float*>(dst + g * stride), stride / 4);
      for (; g < out.groups; ++g)
        for (int64_t r = 0; r < R; ++r) std::memcpy(dst + g * stride + 4 * r, rows_q.data() + r * ld + 4 * g, 4);
      m += R;
      continue;
    }
    uint8_t* q = rows_q.data();
    quantize_panel_row(x, K, m, ld, out, q, wide);
    for (int64_t g = 0; g < out.groups; ++g) std::memcpy(dst + g * stride, q + 4 * g, 4);
    ++m;
  }
}

}  // namespace sqfx
