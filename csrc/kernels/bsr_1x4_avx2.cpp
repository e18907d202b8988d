// AVX2 kernels for row blocks of 1 x cb, cb % 4 == 0: sparse 1x4 (also 1x8,
// 1x16) and the dense layout (one 1 x K_padded block per row).
//
// Exact u8 x s8 products without vpmaddubsw (whose int16 pair sums saturate:
// 2 * 255 * 127 > 32767): both operands are widened to int16 and multiplied
// with vpmaddwd, which sums pairs into int32 without any loss. The int32
// accumulators are exact below kMaxInt32InFeatures (checked by the dispatcher).
//
// rows kernel (small M): weights streamed once, 8 blocks of 1x4 at a time, a
//   flat pass with prefix sums; 1 input row: the 8 block columns range-checked
//   and clamped, the activation dwords gathered (vpgatherdd); 2-3 rows: the
//   columns of a piece checked first, the activation dwords copied with
//   scalar loads into a buffer once for all rows (cheaper than a gather per row).
// panel kernel (large M): activations packed per call (PanelRows), each chunk
//   widened to int16 once, so a block's 4 input columns hold up to 32 rows in
//   8 unit-stride loads; one broadcast weight dword multiplies them all
//   (register tile over input rows).
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "bsr_1x4_x86.h"
#include "panel_i16_avx2.h"

namespace sqfx {
namespace {

using namespace x86;

#define SQFX_AVX2 __attribute__((target("avx2,fma")))

SQFX_AVX2 inline __m256i dot32(__m256i a_u8, __m256i w_s8) {
  __m256i lo = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(a_u8)),
                                 _mm256_cvtepi8_epi16(_mm256_castsi256_si128(w_s8)));
  __m256i hi = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(a_u8, 1)),
                                 _mm256_cvtepi8_epi16(_mm256_extracti128_si256(w_s8, 1)));
  return _mm256_add_epi32(lo, hi);
}

inline int32_t dot4_scalar(const uint8_t* a, const int8_t* w) {
  return int32_t(a[0]) * w[0] + int32_t(a[1]) * w[1] + int32_t(a[2]) * w[2] +
         int32_t(a[3]) * w[3];
}

// Sparse 1x4, few input rows: the flat pass (bsr_1x4_x86.h), 8 blocks per step
// whatever row they belong to. 1 row: indices range-checked and clamped, the
// activation dwords gathered (vpgatherdd; the buffered variant measured 15%
// slower); 2-3 rows: one scalar pre-gather shared by the rows (M=3: 1250 ->
// 820 us for 4096x4096 at 90%).
template <typename Index, int MT>
SQFX_AVX2 bool rows_1x4(const QuantizedRows& a, const BsrWeight& w, const Index* col_idx,
                        float* out, bool relu, int64_t rb_begin, int64_t rb_end, int64_t m0) {
  constexpr bool kBuffered = MT > 1;
  const __m256i max_idx = _mm256_set1_epi32(static_cast<int32_t>(w.n_col_blocks - 1));
  __m256i bad = _mm256_setzero_si256();
  const uint8_t* q[MT];
  for (int m = 0; m < MT; ++m) q[m] = a.q + (m0 + m) * a.ld;
  const bool ok = flat_pass<MT, 4096>(a, w, out, relu, rb_begin, rb_end, m0,
                                      [&](int64_t jb, int64_t je, int32_t* const* prefix,
                                          int32_t* const* act) SQFX_AVX2 {
    bool piece_ok = true;
    if constexpr (kBuffered) piece_ok = gather_checked<Index, MT>(a, w, col_idx, m0, jb, je, act);
    __m256i carry[MT];
    for (int m = 0; m < MT; ++m) carry[m] = _mm256_setzero_si256();
    for (int64_t j = jb; j < je; j += 8) {
      const int64_t rem = je - j;
      __m256i idx = _mm256_setzero_si256(), wv;
      if (kBuffered) {
        const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(rem < 8 ? rem : 8)),
                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        wv = _mm256_maskload_epi32(reinterpret_cast<const int*>(w.values + j * 4), live);
      } else if (rem >= 8) {
        idx = load_idx8(col_idx + j, max_idx, &bad);
        wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.values + j * 4));
      } else {
        alignas(32) Index tail_idx[8] = {};
        std::memcpy(tail_idx, col_idx + j, rem * sizeof(Index));
        idx = load_idx8(tail_idx, max_idx, &bad);
        const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(rem)),
                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        wv = _mm256_maskload_epi32(reinterpret_cast<const int*>(w.values + j * 4), live);
      }
      const __m256i wlo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(wv));
      const __m256i whi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(wv, 1));
      for (int m = 0; m < MT; ++m) {
        // (buffered: lanes past the piece read stale buffer bytes times zero weights)
        __m256i g = kBuffered ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(act[m] + (j - jb)))
                              : _mm256_i32gather_epi32(reinterpret_cast<const int*>(q[m]), idx, 4);
        __m256i lo = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(g)), wlo);
        __m256i hi = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(g, 1)), whi);
        // lanes: lo = pair sums of blocks 0-3, hi = blocks 4-7 -> one dot per block
        __m256i d = _mm256_permute4x64_epi64(_mm256_hadd_epi32(lo, hi), 0xD8);
        __m256i sc = scan8(d, carry[m]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(prefix[m] + 1 + (j - jb)), sc);
        carry[m] = last_lane(sc);
      }
    }
    return piece_ok;
  });
  return ok && !any_bits(bad);
}

// Wider row blocks (1x8, 1x16, the dense 1 x K_pad layout), few input rows:
// per block contiguous 32-byte steps.
template <typename Index, int MT>
SQFX_AVX2 bool rows_wide(const QuantizedRows& a, const BsrWeight& w, const Index* col_idx,
                         float* out, bool relu, int64_t rb_begin, int64_t rb_end, int64_t m0) {
  const int64_t cb = w.col_block;
  bool ok = true;
  const uint8_t* q[MT];
  for (int m = 0; m < MT; ++m) q[m] = a.q + (m0 + m) * a.ld;
  alignas(32) int32_t sums[MT][8];
  int filled = 0;
  int64_t n_first = rb_begin;
  for (int64_t n = rb_begin; n < rb_end; ++n) {
    __m256i acc[MT];
    int32_t tail[MT];
    for (int m = 0; m < MT; ++m) {
      acc[m] = _mm256_setzero_si256();
      tail[m] = 0;
    }
    for (int64_t j = w.row_ptr[n]; j < w.row_ptr[n + 1]; ++j) {
      const int64_t col = static_cast<int64_t>(col_idx[j]);
      if (!col_ok(col, w.n_col_blocks)) { ok = false; continue; }
      const int8_t* v = w.values + j * cb;
      const int64_t off = col * cb;
      int64_t t = 0;
      for (; t + 32 <= cb; t += 32) {
        __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + t));
        for (int m = 0; m < MT; ++m) {
          __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[m] + off + t));
          acc[m] = _mm256_add_epi32(acc[m], dot32(av, wv));
        }
      }
      for (; t < cb; t += 4) {
        for (int m = 0; m < MT; ++m) tail[m] += dot4_scalar(q[m] + off + t, v + t);
      }
    }
    for (int m = 0; m < MT; ++m) sums[m][filled] = hsum8(acc[m]) + tail[m];
    if (++filled == 8 || n + 1 == rb_end) {
      for (int m = 0; m < MT; ++m) {
        __m256i s = _mm256_load_si256(reinterpret_cast<const __m256i*>(sums[m]));
        epilogue_n8(s, a.zp[m0 + m], a.scale[m0 + m], w, n_first, filled, relu,
                    out + (m0 + m) * w.N);
      }
      filled = 0;
      n_first = n + 1;
    }
  }
  return ok;
}

// U units of 8 input rows (rows ms .. ms + 8U of the chunk) for output row n;
// `panel`: the chunk widened to int16 (bsr_1x4_panel_avx2), read straight into vpmaddwd.
template <typename Index, int U>
SQFX_AVX2 bool panel_tile(const PanelRows& a, const int16_t* panel, int64_t m0,
                          int64_t rows, const BsrWeight& w, const Index* col_idx,
                          float* tile, int64_t n_tile, bool relu, int64_t n, int64_t ms) {
  const int64_t cb = w.col_block, nsub = cb / 4, stride = a.mc * 4;
  __m256i acc[2 * U];
  for (int u = 0; u < 2 * U; ++u) acc[u] = _mm256_setzero_si256();
  bool ok = true;
  for (int64_t j = w.row_ptr[n]; j < w.row_ptr[n + 1]; ++j) {
    const int64_t col = static_cast<int64_t>(col_idx[j]);
    if (!col_ok(col, w.n_col_blocks)) { ok = false; continue; }
    const int8_t* v = w.values + j * cb;
    const int16_t* src = panel + col * nsub * stride + ms * 4;
    for (int64_t t = 0; t < nsub; ++t, v += 4, src += stride) {
      int32_t w4;
      std::memcpy(&w4, v, 4);
      __m256i w16 = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(w4)));
      for (int u = 0; u < 2 * U; ++u) {
        const __m256i act = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 16 * u));
        acc[u] = _mm256_add_epi32(acc[u], _mm256_madd_epi16(act, w16));
      }
    }
  }
  for (int u = 0; u < U; ++u) {
    // lanes of acc[2u]: rows 0-3, two pair sums each; acc[2u+1]: rows 4-7.
    __m256i s = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[2 * u], acc[2 * u + 1]), 0xD8);
    const int64_t r = ms + 8 * u;
    if (r >= rows) break;
    const int64_t count = rows - r < 8 ? rows - r : 8;
    epilogue_m8(s, a.zp + m0 + r, a.scale + m0 + r, w, n, count, relu,
                tile + r * kTileN + (n - n_tile), kTileN);
  }
  return ok;
}

}  // namespace

bool bsr_1x4_rows_avx2(const QuantizedRows& a, const BsrWeight& w, float* out,
                       bool relu, int64_t rb_begin, int64_t rb_end) {
  return with_index(w, [&](auto idx) {
    using Index = std::remove_const_t<std::remove_pointer_t<decltype(idx)>>;
    return for_row_tiles<3>(a.M, [&](auto mt, int64_t m0) {
      constexpr int MT = decltype(mt)::value;
      if (w.col_block == 4) return rows_1x4<Index, MT>(a, w, idx, out, relu, rb_begin, rb_end, m0);
      return rows_wide<Index, MT>(a, w, idx, out, relu, rb_begin, rb_end, m0);
    });
  });
}

bool bsr_1x4_panel_avx2(const PanelRows& a, int64_t chunk, const BsrWeight& w,
                        float* out, bool relu, int64_t rb_begin, int64_t rb_end) {
  const int16_t* panel = widened_chunk(a, chunk);
  return with_index(w, [&](auto idx) {
    using Index = std::remove_const_t<std::remove_pointer_t<decltype(idx)>>;
    return panel_loop<8, 4>(a, chunk, w, out, rb_begin, rb_end,
                            [&](auto units, int64_t m0, int64_t rows, int64_t ms, int64_t n,
                                int64_t n_tile, float* tile) {
      return panel_tile<Index, decltype(units)::value>(a, panel, m0, rows, w, idx, tile, n_tile,
                                                       relu, n, ms);
    });
  });
}

}  // namespace sqfx
