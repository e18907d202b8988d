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
// panel kernel (large M): activations packed per call (PanelRows) so a block's
//   4 input columns hold up to 32 rows in 4 unit-stride loads; one broadcast
//   weight dword multiplies them all (register tile over input rows).
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "epilogue_x86.h"
#include "kernels.h"

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

// Accumulators of MT input rows for one output row n.

// Block columns of a piece all in [0, ncb)? (vectorized; a piece holding a bad
// one is not read by the buffered kernel and reported, the op then raises.)
template <typename Index>
SQFX_AVX2 inline bool piece_in_range(const Index* col_idx, int64_t len, uint32_t ncb) {
  int64_t j = 0;
  bool ok = true;
  if constexpr (sizeof(Index) == 2) {
    // negative int16 read as unsigned is >= 32768; int16 columns are < 32768
    const uint32_t limit = ncb < 32768u ? ncb : 32768u;
    const __m256i top = _mm256_set1_epi16(static_cast<short>(limit - 1));
    __m256i hi = _mm256_setzero_si256();
    for (; j + 16 <= len; j += 16)
      hi = _mm256_max_epu16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col_idx + j)));
    ok = _mm256_movemask_epi8(_mm256_cmpeq_epi16(_mm256_max_epu16(hi, top), top)) == -1;
    for (; j < len; ++j) ok &= static_cast<uint16_t>(col_idx[j]) < limit;
  } else {
    const __m256i top = _mm256_set1_epi32(static_cast<int32_t>(ncb - 1));
    __m256i hi = _mm256_setzero_si256();
    for (; j + 8 <= len; j += 8)
      hi = _mm256_max_epu32(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col_idx + j)));
    ok = _mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_max_epu32(hi, top), top)) == -1;
    for (; j < len; ++j) ok &= static_cast<uint32_t>(col_idx[j]) < ncb;
  }
  return ok;
}

// The activation dword of every block of a piece (columns already checked),
// copied with scalar loads into a contiguous buffer: with 2-3 input rows this
// beats one vpgatherdd per row (this AMD EPYC).
template <typename Index, int MT>
__attribute__((optimize("no-tree-vectorize"))) inline void gather_piece(
    const uint8_t* const* q_in, const Index* __restrict col_idx, int64_t len,
    int32_t* const* dst_in) {
  const uint8_t* q0 = q_in[0];
  const uint8_t* q1 = MT > 1 ? q_in[1] : q0;
  const uint8_t* q2 = MT > 2 ? q_in[2] : q0;
  int32_t* __restrict d0 = dst_in[0];
  int32_t* __restrict d1 = MT > 1 ? dst_in[1] : d0;
  int32_t* __restrict d2 = MT > 2 ? dst_in[2] : d0;
  auto one = [&](int64_t j, uint32_t c) {
    const size_t off = 4 * static_cast<size_t>(c);
    std::memcpy(d0 + j, q0 + off, 4);
    if constexpr (MT > 1) std::memcpy(d1 + j, q1 + off, 4);
    if constexpr (MT > 2) std::memcpy(d2 + j, q2 + off, 4);
  };
  int64_t j = 0;
  if constexpr (sizeof(Index) == 2) {
    for (; j + 4 <= len; j += 4) {
      uint64_t c4;
      std::memcpy(&c4, col_idx + j, 8);
      one(j, static_cast<uint32_t>(c4 & 0xFFFF));
      one(j + 1, static_cast<uint32_t>((c4 >> 16) & 0xFFFF));
      one(j + 2, static_cast<uint32_t>((c4 >> 32) & 0xFFFF));
      one(j + 3, static_cast<uint32_t>(c4 >> 48));
    }
    for (; j < len; ++j) one(j, static_cast<uint16_t>(col_idx[j]));
  } else {
    for (; j < len; ++j) one(j, static_cast<uint32_t>(col_idx[j]));
  }
}

// Sparse 1x4, few input rows: a flat pass over all blocks of a group of rows,
// 8 blocks per step whatever row they belong to (no per-row loop whose
// variable trip count would mispredict and serialize the gathers), writing the
// running (prefix) sum of the block dot products; a row's accumulator is then
// the difference of two prefix sums.
template <typename Index, int MT, bool kBuffered>
SQFX_AVX2 bool rows_flat(const QuantizedRows& a, const BsrWeight& w, const Index* col_idx,
                      float* out, bool relu, int64_t rb_begin, int64_t rb_end, int64_t m0) {
  constexpr int64_t kPiece = 4096;  // blocks per pass: prefix sums stay in L1
  thread_local std::vector<int32_t> buffer;
  const __m256i max_idx = _mm256_set1_epi32(static_cast<int32_t>(w.n_col_blocks - 1));
  __m256i bad = _mm256_setzero_si256();
  const uint8_t* q[MT];
  for (int m = 0; m < MT; ++m) q[m] = a.q + (m0 + m) * a.ld;
  alignas(32) int32_t sums[MT][8];
  int filled = 0;
  int64_t n_first = rb_begin;
  for (int64_t n = rb_begin; n < rb_end;) {
    const int64_t jb = w.row_ptr[n];
    int64_t n_end = n + 1;
    while (n_end < rb_end && w.row_ptr[n_end + 1] - jb <= kPiece) ++n_end;
    const int64_t je = w.row_ptr[n_end];
    const int64_t stride = je - jb + 9;
    if (static_cast<int64_t>(buffer.size()) < MT * stride) buffer.resize(MT * stride);
    if (static_cast<int64_t>(buffer.size()) < 2 * MT * stride) buffer.resize(2 * MT * stride);
    int32_t* prefix[MT];
    int32_t* act[MT];
    __m256i carry[MT];
    for (int m = 0; m < MT; ++m) {
      prefix[m] = buffer.data() + m * stride;
      act[m] = buffer.data() + (MT + m) * stride;
      prefix[m][0] = 0;
      carry[m] = _mm256_setzero_si256();
    }
    if constexpr (kBuffered) {
      if (piece_in_range(col_idx + jb, je - jb, static_cast<uint32_t>(w.n_col_blocks))) {
        gather_piece<Index, MT>(q, col_idx + jb, je - jb, act);
      } else {
        bad = _mm256_set1_epi32(-1);
        for (int m = 0; m < MT; ++m) std::memset(act[m], 0, (je - jb) * sizeof(int32_t));
      }
    }
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
        __m256i s = scan8(d, carry[m]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(prefix[m] + 1 + (j - jb)), s);
        carry[m] = last_lane(s);
      }
    }
    for (int64_t r = n; r < n_end; ++r) {
      const int64_t s0 = w.row_ptr[r] - jb, s1 = w.row_ptr[r + 1] - jb;
      for (int m = 0; m < MT; ++m)
        sums[m][filled] = static_cast<int32_t>(static_cast<uint32_t>(prefix[m][s1]) -
                                               static_cast<uint32_t>(prefix[m][s0]));
      if (++filled == 8 || r + 1 == rb_end) {
        for (int m = 0; m < MT; ++m) {
          __m256i s = _mm256_load_si256(reinterpret_cast<const __m256i*>(sums[m]));
          epilogue_n8(s, a.zp[m0 + m], a.scale[m0 + m], w, n_first, filled, relu,
                      out + (m0 + m) * w.N);
        }
        filled = 0;
        n_first = r + 1;
      }
    }
    n = n_end;
  }
  return !any_bits(bad);
}

template <typename Index, int MT>
SQFX_AVX2 bool rows_tile(const QuantizedRows& a, const BsrWeight& w,
                         const Index* col_idx, float* out, bool relu,
                         int64_t rb_begin, int64_t rb_end, int64_t m0) {
  const int64_t cb = w.col_block;
  if (cb == 4) {
    // 1 input row: vpgatherdd (the buffered variant measured 15% slower);
    // 2-3 rows: one scalar pre-gather shared by the rows (M=3: 1250 -> 820 us
    // for 4096x4096 at 90%).
    return rows_flat<Index, MT, (MT > 1)>(a, w, col_idx, out, relu, rb_begin, rb_end, m0);
  }
  const __m256i max_idx = _mm256_set1_epi32(static_cast<int32_t>(w.n_col_blocks - 1));
  __m256i bad = _mm256_setzero_si256();
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
    int64_t j = w.row_ptr[n];
    const int64_t end = w.row_ptr[n + 1];
    if (cb == 4) {
      for (; j + 8 <= end; j += 8) {
        __m256i idx = load_idx8(col_idx + j, max_idx, &bad);
        __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.values + j * 4));
        __m256i wlo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(wv));
        __m256i whi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(wv, 1));
        for (int m = 0; m < MT; ++m) {
          __m256i g = _mm256_i32gather_epi32(reinterpret_cast<const int*>(q[m]), idx, 4);
          __m256i lo = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(g)), wlo);
          __m256i hi = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(g, 1)), whi);
          acc[m] = _mm256_add_epi32(acc[m], _mm256_add_epi32(lo, hi));
        }
      }
      if (j < end) {
        // Tail of 1..7 blocks: masked weight load (no fault, zeros) and the
        // indices copied to a zeroed buffer, instead of a scalar loop whose
        // variable trip count costs branch mispredictions.
        const int64_t rem = end - j;
        alignas(32) Index tail_idx[8] = {};
        std::memcpy(tail_idx, col_idx + j, rem * sizeof(Index));
        __m256i idx = load_idx8(tail_idx, max_idx, &bad);
        const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(rem)),
                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256i wv = _mm256_maskload_epi32(reinterpret_cast<const int*>(w.values + j * 4), live);
        __m256i wlo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(wv));
        __m256i whi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(wv, 1));
        for (int m = 0; m < MT; ++m) {
          __m256i g = _mm256_i32gather_epi32(reinterpret_cast<const int*>(q[m]), idx, 4);
          __m256i lo = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(g)), wlo);
          __m256i hi = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(g, 1)), whi);
          acc[m] = _mm256_add_epi32(acc[m], _mm256_add_epi32(lo, hi));
        }
      }
    } else {
      for (; j < end; ++j) {
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
  return ok && !any_bits(bad);
}

template <typename Index>
bool rows_impl(const QuantizedRows& a, const BsrWeight& w, const Index* idx,
               float* out, bool relu, int64_t rb_begin, int64_t rb_end) {
  bool ok = true;
  for (int64_t m0 = 0; m0 < a.M; m0 += 4) {
    switch (a.M - m0 >= 4 ? 4 : a.M - m0) {
      case 4: ok &= rows_tile<Index, 4>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
      case 3: ok &= rows_tile<Index, 3>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
      case 2: ok &= rows_tile<Index, 2>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
      default: ok &= rows_tile<Index, 1>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
    }
  }
  return ok;
}

// U units of 8 input rows (rows ms .. ms + 8U of the chunk) for output row n.
template <typename Index, int U>
SQFX_AVX2 bool panel_tile(const PanelRows& a, const uint8_t* panel, int64_t m0,
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
    const uint8_t* src = panel + col * nsub * stride + ms * 4;
    for (int64_t t = 0; t < nsub; ++t, v += 4, src += stride) {
      int32_t w4;
      std::memcpy(&w4, v, 4);
      __m256i w16 = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(w4)));
      for (int u = 0; u < U; ++u) {
        __m256i lo = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 32 * u)));
        __m256i hi = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 32 * u + 16)));
        acc[2 * u] = _mm256_add_epi32(acc[2 * u], _mm256_madd_epi16(lo, w16));
        acc[2 * u + 1] = _mm256_add_epi32(acc[2 * u + 1], _mm256_madd_epi16(hi, w16));
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

template <typename Index>
bool panel_impl(const PanelRows& a, int64_t chunk, const BsrWeight& w,
                const Index* idx, float* out, bool relu, int64_t rb_begin,
                int64_t rb_end) {
  const int64_t m0 = chunk * a.mc;
  const int64_t rows = a.M - m0 < a.mc ? a.M - m0 : a.mc;
  const int64_t units = (rows + 7) / 8;
  const uint8_t* panel = a.data + chunk * a.groups * a.mc * 4;
  bool ok = true;
  thread_local std::vector<float> tile_buffer;
  if (static_cast<int64_t>(tile_buffer.size()) < a.mc * kTileN) tile_buffer.resize(a.mc * kTileN);
  float* tile = tile_buffer.data();
  int64_t n_tile = rb_begin;
  for (int64_t n = rb_begin; n < rb_end; ++n) {
    if (n - n_tile == kTileN) {
      flush_tile(tile, rows, n_tile, kTileN, w.N, out + m0 * w.N);
      n_tile = n;
    }
    for (int64_t u = 0; u < units; u += 4) {
      const int64_t ms = u * 8;
      switch (units - u >= 4 ? 4 : units - u) {
        case 4: ok &= panel_tile<Index, 4>(a, panel, m0, rows, w, idx, tile, n_tile, relu, n, ms); break;
        case 3: ok &= panel_tile<Index, 3>(a, panel, m0, rows, w, idx, tile, n_tile, relu, n, ms); break;
        case 2: ok &= panel_tile<Index, 2>(a, panel, m0, rows, w, idx, tile, n_tile, relu, n, ms); break;
        default: ok &= panel_tile<Index, 1>(a, panel, m0, rows, w, idx, tile, n_tile, relu, n, ms); break;
      }
    }
  }
  if (rb_end > rb_begin) flush_tile(tile, rows, n_tile, rb_end - n_tile, w.N, out + m0 * w.N);
  return ok;
}

}  // namespace

bool bsr_1x4_rows_avx2(const QuantizedRows& a, const BsrWeight& w, float* out,
                       bool relu, int64_t rb_begin, int64_t rb_end) {
  if (w.col_idx_16)
    return rows_impl(a, w, static_cast<const int16_t*>(w.col_idx), out, relu, rb_begin, rb_end);
  return rows_impl(a, w, static_cast<const int32_t*>(w.col_idx), out, relu, rb_begin, rb_end);
}

bool bsr_1x4_panel_avx2(const PanelRows& a, int64_t chunk, const BsrWeight& w,
                        float* out, bool relu, int64_t rb_begin, int64_t rb_end) {
  if (w.col_idx_16)
    return panel_impl(a, chunk, w, static_cast<const int16_t*>(w.col_idx), out, relu, rb_begin, rb_end);
  return panel_impl(a, chunk, w, static_cast<const int32_t*>(w.col_idx), out, relu, rb_begin, rb_end);
}

}  // namespace sqfx
