// Code shared by the x86 1 x 4c kernels (bsr_1x4_avx2.cpp, bsr_1x4_avx512vnni.cpp):
// the index-width switch, the loop over tiles of input rows, the piece-wise
// flat pass (range check, scalar pre-gather of activation dwords, prefix sums
// turned into row sums and the n-direction epilogue) and the panel loop over
// output rows and units of input rows. The ISA files keep only the inner
// products.
#pragma once
#include <immintrin.h>

#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "epilogue_x86.h"
#include "kernels.h"

namespace sqfx {
namespace x86 {

// f(const int16_t*) or f(const int32_t*), by the weight's index width.
template <typename F>
inline bool with_index(const BsrWeight& w, const F& f) {
  if (w.col_idx_16) return f(static_cast<const int16_t*>(w.col_idx));
  return f(static_cast<const int32_t*>(w.col_idx));
}

// f(std::integral_constant<int, C>{}) for the runtime count c in [1, kMax].
template <typename F, int... I>
inline void with_count_impl(int64_t c, const F& f, std::integer_sequence<int, I...>) {
  ((c == I + 1 ? (f(std::integral_constant<int, I + 1>{}), 0) : 0), ...);
}
template <int kMax, typename F>
inline void with_count(int64_t c, const F& f) {
  with_count_impl(c, f, std::make_integer_sequence<int, kMax>{});
}

// Runs f(std::integral_constant<int, MT>, m0) over tiles of at most kMaxTile
// input rows (MT a compile-time tile height).
template <int kMaxTile, typename F>
inline bool for_row_tiles(int64_t M, const F& f) {
  bool ok = true;
  for (int64_t m0 = 0; m0 < M; m0 += kMaxTile) {
    const int64_t left = M - m0 < kMaxTile ? M - m0 : kMaxTile;
    with_count<kMaxTile>(left, [&](auto mt) { ok &= f(mt, m0); });
  }
  return ok;
}

// Block columns of a piece all in [0, ncb)? (vectorized; a piece holding a bad
// one is not read by the buffered kernels and reported, the op then raises.)
template <typename Index>
__attribute__((target("avx2,fma"))) inline bool piece_in_range(const Index* col_idx, int64_t len,
                                                             uint32_t ncb) {
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
// copied with scalar loads into a contiguous buffer, once for all MT <= 3
// rows: on the AMD EPYC this beats one vpgatherdd per row.
template <typename Index, int MT>
__attribute__((optimize("no-tree-vectorize"))) inline void gather_piece(
    const uint8_t* const* q_in, const Index* __restrict col_idx, int64_t len,
    int32_t* const* dst_in) {
  static_assert(MT >= 1 && MT <= 3, "gather_piece serves 1-3 rows");
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

// The flat pass of the rows kernels, for MT input rows starting at m0: output
// rows are cut into pieces of at most kPiece blocks (whole rows, at least one);
// for each, pass(jb, je, prefix) must write prefix[m][1 + j - jb] = the running
// (wrapping) sum of the block dot products of row m0 + m over blocks jb..j
// (prefix[m][0] = 0 is set here; the buffer has room for je - jb + 17 entries
// per row, and MT more rows of the same size behind it at act(m) for a
// pre-gather). A row's accumulator is then the difference of two prefix sums,
// exact because the true sum fits int32; 8 rows at a time go through the
// n-direction epilogue.
template <int MT, int64_t kPiece, typename Pass>
__attribute__((target("avx2,fma"))) inline bool flat_pass(const QuantizedRows& a,
                                                        const BsrWeight& w, float* out, bool relu,
                                                        int64_t rb_begin, int64_t rb_end,
                                                        int64_t m0, const Pass& pass) {
  thread_local std::vector<int32_t> buffer;
  alignas(32) int32_t sums[MT][8];
  int filled = 0;
  int64_t n_first = rb_begin;
  bool ok = true;
  for (int64_t n = rb_begin; n < rb_end;) {
    const int64_t jb = w.row_ptr[n];
    int64_t n_end = n + 1;
    while (n_end < rb_end && w.row_ptr[n_end + 1] - jb <= kPiece) ++n_end;
    const int64_t je = w.row_ptr[n_end];
    const int64_t stride = je - jb + 17;
    if (static_cast<int64_t>(buffer.size()) < 2 * MT * stride) buffer.resize(2 * MT * stride);
    int32_t* prefix[MT];
    int32_t* act[MT];
    for (int m = 0; m < MT; ++m) {
      prefix[m] = buffer.data() + m * stride;
      act[m] = buffer.data() + (MT + m) * stride;
      prefix[m][0] = 0;
    }
    ok &= pass(jb, je, prefix, act);
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
  return ok;
}

// Pre-gathers a piece's activation dwords for MT rows (act[m][j - jb]); a piece
// holding an out-of-range column is not read (zeros) and reported.
template <typename Index, int MT>
inline bool gather_checked(const QuantizedRows& a, const BsrWeight& w, const Index* col_idx,
                           int64_t m0, int64_t jb, int64_t je, int32_t* const* act) {
  const uint8_t* q[MT];
  for (int m = 0; m < MT; ++m) q[m] = a.q + (m0 + m) * a.ld;
  if (piece_in_range(col_idx + jb, je - jb, static_cast<uint32_t>(w.n_col_blocks))) {
    gather_piece<Index, MT>(q, col_idx + jb, je - jb, act);
    return true;
  }
  for (int m = 0; m < MT; ++m) std::memset(act[m], 0, (je - jb) * sizeof(int32_t));
  return false;
}

// The panel kernels' loop: for each output row n of [rb_begin, rb_end) and
// each group of up to kMaxUnits units of kUnitRows input rows of the chunk,
// tile(std::integral_constant<int, U>, ms, n, n_tile, tile) accumulates and
// stores into the tile (rows x kTileN floats, flushed to out every kTileN
// outputs).
template <int kUnitRows, int kMaxUnits, typename Tile>
inline bool panel_loop(const PanelRows& a, int64_t chunk, const BsrWeight& w, float* out,
                       int64_t rb_begin, int64_t rb_end, const Tile& tile_fn) {
  const int64_t m0 = chunk * a.mc;
  const int64_t rows = a.M - m0 < a.mc ? a.M - m0 : a.mc;
  const int64_t units = (rows + kUnitRows - 1) / kUnitRows;
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
    for (int64_t u = 0; u < units; u += kMaxUnits) {
      const int64_t left = units - u < kMaxUnits ? units - u : kMaxUnits;
      const int64_t ms = u * kUnitRows;
      with_count<kMaxUnits>(left, [&](auto units_here) {
        ok &= tile_fn(units_here, m0, rows, ms, n, n_tile, tile);
      });
    }
  }
  if (rb_end > rb_begin) flush_tile(tile, rows, n_tile, rb_end - n_tile, w.N, out + m0 * w.N);
  return ok;
}

}  // namespace x86
}  // namespace sqfx

namespace sqfx {
namespace x86 {

// Epilogue of a tile of the tiled layout: lane l is output row row[l] (or none).
struct TileLanes {
  alignas(32) int32_t w_sum[kTiledLanes];
  alignas(32) float w_scale[kTiledLanes];
  alignas(32) float bias[kTiledLanes];
  int32_t row[kTiledLanes];
};

// The lanes of tile t; row_perm entries were checked to be in [-1, N) by the op.
inline void tile_lanes(const BsrWeight& w, int64_t t, TileLanes* p) {
  for (int l = 0; l < kTiledLanes; ++l) {
    const int32_t r = w.tiled->row_perm[t * kTiledLanes + l];
    p->row[l] = r;
    p->w_sum[l] = r >= 0 ? w.w_sum[r] : 0;
    p->w_scale[l] = r >= 0 ? w.w_scale[r] : 0.0f;
    p->bias[l] = (r >= 0 && w.bias) ? w.bias[r] : 0.0f;
  }
}

// Lanes 8h..8h+7 of a tile for one input row: the same float32 steps as
// sqfx::epilogue, stored to y[row[l]] (y = the input row's output row).
__attribute__((target("avx2,fma"))) inline void store_lanes8(__m256i acc, int32_t zp, float a_scale,
                                                           const TileLanes& p, int h,
                                                           bool has_bias, bool relu, float* y) {
  const int o = 8 * h;
  __m256i wsum = _mm256_load_si256(reinterpret_cast<const __m256i*>(p.w_sum + o));
  __m256i corr = _mm256_sub_epi32(acc, _mm256_mullo_epi32(_mm256_set1_epi32(zp), wsum));
  __m256 s = _mm256_mul_ps(_mm256_set1_ps(a_scale), _mm256_load_ps(p.w_scale + o));
  __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(corr), s);
  if (has_bias) v = _mm256_add_ps(v, _mm256_load_ps(p.bias + o));
  if (relu) {
    __m256 zero = _mm256_setzero_ps();
    v = _mm256_blendv_ps(v, zero, _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  for (int l = 0; l < 8; ++l)
    if (p.row[o + l] >= 0) y[p.row[o + l]] = t[l];
}


}  // namespace x86
}  // namespace sqfx
