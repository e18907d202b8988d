// The weight-only fp32 kernels' shared code, written once over a vector type V (wo_kernels.h
// describes the two families). Included by one file per ISA, which defines V and
// SQFX_WO_TARGET (its target attribute) first; everything here has internal linkage, so
// no function compiled for one ISA can be picked by the linker for another.
//
// Numerics: fp32 FMAs, summed in k order per output (per lane: one running sum over the whole
// row); within the documented tolerance of sqfx.reference.qlinear_weight_only.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "wo_kernels.h"

namespace sqfx {
namespace {

inline int64_t wo_min(int64_t a, int64_t b) { return a < b ? a : b; }

inline float wo_finish(float acc, const BsrWeight& w, int64_t n, bool relu) {
  float y = acc * w.w_scale[n];
  if (w.bias) y = y + w.bias[n];
  if (relu) y = (y < 0.0f) ? 0.0f : y;  // keeps NaN, as torch.relu does
  return y;
}

// ---- int8 rows of the weight (rowdot_MRx4, and the dense panels' dequantization) ----

// int8 rows [n0, n0 + 4) of the weight, each kpad bytes (kpad: ld rounded up to the vector
// width, zero past ld): straight from values where a 1 x cb row stores every block in order
// (0% sparse, or the dense layout) and ld is a whole number of vectors, else copied block by
// block into rows (zero where pruned). Returns kRowsBad on a bad block column index, and
// kRowsUnsorted when some row's block columns are not strictly increasing
// (a crafted weight: a repeated column must add, which an int8 row cannot hold).
enum RowsStatus { kRowsOk, kRowsBad, kRowsUnsorted };
template <typename V, typename Index>
SQFX_WO_TARGET RowsStatus int8_rows(const BsrWeight& w, const Index* col_idx, int64_t ld, int64_t kpad,
                                    int64_t n0, int64_t nn, int8_t* rows, const int8_t* wr[4]) {
  const int64_t rb = w.row_block, cb = w.col_block, block = rb * cb;
  for (int64_t r = 0; r < nn; ++r) {
    const int64_t n = n0 + r, i = n / rb, j0 = w.row_ptr[i], j1 = w.row_ptr[i + 1];
    // One pass, 32-bit lanes (vectorizes): any index out of range, any index != its position.
    const int32_t count = static_cast<int32_t>(j1 - j0);  // row_ptr is int32
    // Every index is below 2^31 (int16/int32), so clamping the limit there changes nothing.
    const uint32_t limit = static_cast<uint32_t>(wo_min(w.n_col_blocks, int64_t{1} << 31));
    uint32_t bad = 0, disorder = 0, unsorted = 0;
    for (int32_t t = 0; t < count; ++t) {
      const int32_t col = static_cast<int32_t>(col_idx[j0 + t]);
      bad |= static_cast<uint32_t>(static_cast<uint32_t>(col) >= limit);
      disorder |= static_cast<uint32_t>(col ^ t);
    }
    for (int32_t t = 1; t < count; ++t)  // two loads per step: vectorizes
      unsorted |= static_cast<uint32_t>(static_cast<int32_t>(col_idx[j0 + t]) <= static_cast<int32_t>(col_idx[j0 + t - 1]));
    if (bad) return kRowsBad;
    if (unsorted) return kRowsUnsorted;  // rows copied so far are unused
    if (rb == 1 && j1 - j0 == w.n_col_blocks && disorder == 0 && kpad == ld) {  // every block stored, in order: the row as it is in values
      wr[r] = w.values + j0 * block;
      continue;
    }
    int8_t* dst = rows + r * kpad;
    std::memset(dst, 0, static_cast<size_t>(kpad));
    const int8_t* src = w.values + (n - i * rb) * cb;
    if (cb == 4) {
      for (int64_t j = j0; j < j1; ++j) std::memcpy(dst + static_cast<int64_t>(col_idx[j]) * 4, src + j * block, 4);
    } else {
      for (int64_t j = j0; j < j1; ++j) {
        int8_t* d = dst + static_cast<int64_t>(col_idx[j]) * cb;
        for (int64_t c = 0; c < cb; ++c) d[c] = src[j * block + c];
      }
    }
    wr[r] = dst;
  }
  for (int64_t r = nn; r < 4; ++r) wr[r] = wr[0];  // computed, never stored
  return kRowsOk;
}

// ---- dense_MRxNR ----

// Dequantizes output rows [n0, n0 + NR) into panel[k * NR + (n - n0)] (zero where pruned).
template <typename V, int NR, typename Index>
SQFX_WO_TARGET bool dequantize_panel(const BsrWeight& w, const Index* col_idx, int64_t ld, int64_t n0,
                                     float* panel) {
  std::memset(panel, 0, sizeof(float) * ld * NR);
  const int64_t rb = w.row_block, cb = w.col_block, block = rb * cb;
  const int64_t n1 = wo_min(n0 + NR, w.N);
  for (int64_t i = n0 / rb; i * rb < n1; ++i) {
    for (int64_t j = w.row_ptr[i]; j < w.row_ptr[i + 1]; ++j) {
      const int64_t col = static_cast<int64_t>(col_idx[j]);
      if (col < 0 || col >= w.n_col_blocks) return false;
      const int8_t* v = w.values + j * block;
      for (int64_t r = 0; r < rb; ++r) {
        const int64_t n = i * rb + r;
        if (n < n0) continue;
        if (n >= n1) break;
        float* dst = panel + col * cb * NR + (n - n0);
        // += : a crafted weight may store a block column twice (only sqfx.load checks the order);
        // the op's meaning is the sum of the stored blocks, as in every other kernel.
        for (int64_t c = 0; c < cb; ++c) dst[c * NR] += static_cast<float>(v[r * cb + c]);
      }
    }
  }
  return true;
}

// r[i] (row i of an 8 x 8 block) -> r[k] (column k).
SQFX_WO_TARGET inline void transpose_8x8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int h = 0; h < 8; h += 4) {
    u[h + 0] = _mm256_shuffle_ps(t[h + 0], t[h + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[h + 1] = _mm256_shuffle_ps(t[h + 0], t[h + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// dequantize_panel through int8 rows: each output row as a dense int8 row (as stored where every
// block is, else copied into rows: NR * ld bytes, plus ld zero bytes for rows past N), then
// 8 x 8 tiles widened and transposed in registers. About 10x fewer cycles per weight than the
// scalar scatter, which cost 384x1536 at M = 64 almost half its time. kRowsUnsorted (a crafted
// weight repeating a column, whose blocks must add): the caller falls back to the scatter.
template <typename V, int NR, typename Index>
SQFX_WO_TARGET RowsStatus dequantize_panel_rows(const BsrWeight& w, const Index* col_idx, int64_t ld, int64_t n0,
                                                float* panel, int8_t* rows) {
  static_assert(NR % 8 == 0, "panels of whole 8-row groups");
  const int8_t* wr[NR];
  int8_t* zero_row = rows + NR * ld;
  std::memset(zero_row, 0, static_cast<size_t>(ld));
  for (int q = 0; q < NR; q += 4) {
    const int64_t nn = wo_min(4, w.N - (n0 + q));
    if (nn <= 0) {
      for (int r = 0; r < 4; ++r) wr[q + r] = zero_row;
      continue;
    }
    const RowsStatus st = int8_rows<V>(w, col_idx, ld, ld, n0 + q, nn, rows + q * ld, wr + q);
    if (st != kRowsOk) return st;
    for (int64_t r = nn; r < 4; ++r) wr[q + r] = zero_row;
  }
  int64_t k0 = 0;
  for (; k0 + 8 <= ld; k0 += 8) {
    for (int g = 0; g < NR; g += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(wr[g + i] + k0));
        r[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
      }
      transpose_8x8(r);
      for (int k = 0; k < 8; ++k) _mm256_storeu_ps(panel + (k0 + k) * NR + g, r[k]);
    }
  }
  for (; k0 < ld; ++k0)
    for (int r = 0; r < NR; ++r) panel[k0 * NR + r] = static_cast<float>(wr[r][k0]);
  return kRowsOk;
}

// acc[MR x NR] = x[MR rows, 0..ld) . panel, stored to c (row-major MR x NR).
template <typename V, int MR, int NR>
SQFX_WO_TARGET inline void dense_tile(const float* x, int64_t stride, int64_t K, const float* panel, float* c) {
  constexpr int NV = NR / V::kWidth;
  typename V::Reg acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = V::zero();
  for (int64_t k = 0; k < K; ++k) {
    typename V::Reg b[NV];
    for (int j = 0; j < NV; ++j) b[j] = V::load(panel + k * NR + j * V::kWidth);
    for (int i = 0; i < MR; ++i) {
      const typename V::Reg a = V::broadcast(x + i * stride + k);
      for (int j = 0; j < NV; ++j) acc[i][j] = V::fma(a, b[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) V::store(c + i * NR + j * V::kWidth, acc[i][j]);
}

template <typename V, int MR, int NR>
SQFX_WO_TARGET void dense_tile_rows(int rows, const float* x, int64_t stride, int64_t K, const float* panel,
                                    float* c) {
  if constexpr (MR > 1) {
    if (rows < MR) return dense_tile_rows<V, MR - 1, NR>(rows, x, stride, K, panel, c);
  }
  dense_tile<V, MR, NR>(x, stride, K, panel, c);
}

template <typename V, int MR, int NR, typename Index>
SQFX_WO_TARGET bool dense_panels(const WoRows& a, const BsrWeight& w, const Index* col_idx, bool relu,
                                 float* out, int64_t p_begin, int64_t p_end, float* panel) {
  alignas(64) float c[MR * NR];
  for (int64_t p = p_begin; p < p_end; ++p) {
    const int64_t n0 = p * NR, nn = wo_min(NR, w.N - n0);
    const int64_t ld = w.n_col_blocks * w.col_block;
    const RowsStatus st = dequantize_panel_rows<V, NR>(w, col_idx, ld, n0, panel, reinterpret_cast<int8_t*>(panel + ld * NR));
    if (st == kRowsBad) return false;
    if (st == kRowsUnsorted && !dequantize_panel<V, NR>(w, col_idx, ld, n0, panel)) return false;
    for (int64_t m0 = 0; m0 < a.M; m0 += MR) {
      const int rows = static_cast<int>(wo_min(MR, a.M - m0));
      dense_tile_rows<V, MR, NR>(rows, a.x + m0 * a.stride, a.stride, a.K, panel, c);
      for (int i = 0; i < rows; ++i) {
        float* y = out + (m0 + i) * w.N + n0;
        for (int64_t n = 0; n < nn; ++n) y[n] = wo_finish(c[i * NR + n], w, n0 + n, relu);
      }
    }
  }
  return true;
}

template <typename V, int MR, int NR>
SQFX_WO_TARGET bool dense_entry(const WoRows& a, const BsrWeight& w, bool relu, float* out,
                                int64_t p_begin, int64_t p_end, float* panel) {
  return w.col_idx_16
             ? dense_panels<V, MR, NR>(a, w, static_cast<const int16_t*>(w.col_idx), relu, out, p_begin, p_end, panel)
             : dense_panels<V, MR, NR>(a, w, static_cast<const int32_t*>(w.col_idx), relu, out, p_begin, p_end, panel);
}

// ---- rowdot_MRx4 ----

// The group's rows block by block (sums repeated columns): the fallback for kRowsUnsorted.
template <typename Index>
void rowdot_scalar_rows(const WoRows& a, const BsrWeight& w, const Index* col_idx, bool relu, float* out,
                        int64_t n0, int64_t nn) {
  const int64_t rb = w.row_block, cb = w.col_block, block = rb * cb;
  for (int64_t m = 0; m < a.M; ++m) {
    const float* x = a.x + m * a.stride;  // zero padded up to kpad >= n_col_blocks * cb
    for (int64_t r = 0; r < nn; ++r) {
      const int64_t n = n0 + r, i = n / rb;
      const int8_t* src = w.values + (n - i * rb) * cb;
      float acc = 0.0f;
      for (int64_t j = w.row_ptr[i]; j < w.row_ptr[i + 1]; ++j) {
        const float* xa = x + static_cast<int64_t>(col_idx[j]) * cb;
        for (int64_t c = 0; c < cb; ++c) acc += xa[c] * static_cast<float>(src[j * block + c]);
      }
      out[m * w.N + n] = wo_finish(acc, w, n, relu);
    }
  }
}

// c[i][r] = x[i] . w[r] for MR input rows and 4 weight rows; each weight vector is widened to
// fp32 once and multiplies MR rows.
template <typename V, int MR>
SQFX_WO_TARGET inline void rowdot_tile(const float* x, int64_t stride, int64_t kpad, const int8_t* const wr[4],
                                       float c[][4]) {
  typename V::Reg acc[MR][4];
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < 4; ++r) acc[i][r] = V::zero();
  for (int64_t k = 0; k < kpad; k += V::kWidth) {
    typename V::Reg xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = V::load(x + i * stride + k);
    for (int r = 0; r < 4; ++r) {
      const typename V::Reg wv = V::load_i8(wr[r] + k);
      for (int i = 0; i < MR; ++i) acc[i][r] = V::fma(xv[i], wv, acc[i][r]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < 4; ++r) c[i][r] = V::hsum(acc[i][r]);
}

template <typename V, int MR>
SQFX_WO_TARGET void rowdot_tile_rows(int rows, const float* x, int64_t stride, int64_t kpad,
                                     const int8_t* const wr[4], float c[][4]) {
  if constexpr (MR > 1) {
    if (rows < MR) return rowdot_tile_rows<V, MR - 1>(rows, x, stride, kpad, wr, c);
  }
  rowdot_tile<V, MR>(x, stride, kpad, wr, c);
}

template <typename V, int MR, typename Index>
SQFX_WO_TARGET bool rowdot_groups(const WoRows& a, const BsrWeight& w, const Index* col_idx, bool relu,
                                  float* out, int64_t g_begin, int64_t g_end, int8_t* rows) {
  const int64_t ld = w.n_col_blocks * w.col_block, kpad = a.stride;
  float c[MR][4];
  for (int64_t g = g_begin; g < g_end; ++g) {
    const int64_t n0 = g * 4, nn = wo_min(4, w.N - n0);
    const int8_t* wr[4];
    const RowsStatus status = int8_rows<V>(w, col_idx, ld, kpad, n0, nn, rows, wr);
    if (status == kRowsBad) return false;
    if (status == kRowsUnsorted) {
      rowdot_scalar_rows(a, w, col_idx, relu, out, n0, nn);
      continue;
    }
    for (int64_t m0 = 0; m0 < a.M; m0 += MR) {
      const int tile = static_cast<int>(wo_min(MR, a.M - m0));
      rowdot_tile_rows<V, MR>(tile, a.x + m0 * a.stride, a.stride, kpad, wr, c);
      for (int i = 0; i < tile; ++i)
        for (int64_t r = 0; r < nn; ++r) out[(m0 + i) * w.N + n0 + r] = wo_finish(c[i][r], w, n0 + r, relu);
    }
  }
  return true;
}

template <typename V, int MR>
SQFX_WO_TARGET bool rowdot_entry(const WoRows& a, const BsrWeight& w, bool relu, float* out,
                                 int64_t g_begin, int64_t g_end, int8_t* rows) {
  return w.col_idx_16
             ? rowdot_groups<V, MR>(a, w, static_cast<const int16_t*>(w.col_idx), relu, out, g_begin, g_end, rows)
             : rowdot_groups<V, MR>(a, w, static_cast<const int32_t*>(w.col_idx), relu, out, g_begin, g_end, rows);
}

// ---- bsr_mMT ----

// One output row n over the chunk: acc[q] += w * xT[k][q * W ..], CB columns per block
// (CB = 0: w.col_block at run time).
template <typename V, int MT, int CB, typename Index>
SQFX_WO_TARGET inline void bsr_row(const float* xT, const BsrWeight& w, const Index* col_idx, int64_t j0,
                                   int64_t j1, const float* wrow, int64_t block, float* c) {
  constexpr int R = MT / V::kWidth;
  const int64_t cb = CB ? CB : w.col_block;
  typename V::Reg acc[R];
  for (int q = 0; q < R; ++q) acc[q] = V::zero();
  for (int64_t j = j0; j < j1; ++j) {
    const float* xk = xT + static_cast<int64_t>(col_idx[j]) * cb * MT;
    const float* wv = wrow + (j - j0) * block;
    for (int64_t t = 0; t < cb; ++t) {
      const typename V::Reg b = V::broadcast(wv + t);
      for (int q = 0; q < R; ++q) acc[q] = V::fma(b, V::load(xk + t * MT + q * V::kWidth), acc[q]);
    }
  }
  for (int q = 0; q < R; ++q) V::store(c + q * V::kWidth, acc[q]);
}

// Outputs of kOutTile consecutive output rows are gathered before they are written, so each
// input row gets one contiguous piece instead of one float per output row: those column-strided
// stores (stride N floats) fell into a few cache sets and evicted each other (3072x768, 80%,
// M = 512: the 64-row tile ran at 0.6x the 32-row one before this).
constexpr int kOutTile = 16;

template <typename V, int MT>
SQFX_WO_TARGET inline void bsr_flush(const float (*tile)[MT], int64_t n0, int64_t count, int64_t m0, int64_t rows,
                                     const BsrWeight& w, bool relu, float* out) {
  for (int64_t m = 0; m < rows; ++m) {
    float* y = out + (m0 + m) * w.N + n0;
    for (int64_t t = 0; t < count; ++t) y[t] = wo_finish(tile[t][m], w, n0 + t, relu);
  }
}

template <typename V, int MT, typename Index>
SQFX_WO_TARGET bool bsr_chunk(const float* xT, int64_t m0, int64_t rows, const BsrWeight& w,
                              const Index* col_idx, bool relu, float* out, int64_t rb_begin,
                              int64_t rb_end, float* wbuf) {
  alignas(64) float tile[kOutTile][MT];
  const int64_t rb = w.row_block, cb = w.col_block, block = rb * cb;
  int64_t tile_n0 = rb_begin * rb, filled = 0;
  for (int64_t i = rb_begin; i < rb_end; ++i) {
    const int64_t j0 = w.row_ptr[i], j1 = w.row_ptr[i + 1];
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t col = static_cast<int64_t>(col_idx[j]);
      if (col < 0 || col >= w.n_col_blocks) return false;
    }
    // The row block's weights to fp32 once, for all its rows and the whole chunk.
    const int8_t* v = w.values + j0 * block;
    const int64_t count = (j1 - j0) * block;
    int64_t e = 0;
    for (; e + V::kWidth <= count; e += V::kWidth) V::store(wbuf + e, V::load_i8(v + e));
    for (; e < count; ++e) wbuf[e] = static_cast<float>(v[e]);
    for (int64_t r = 0; r < rb; ++r) {
      const int64_t n = i * rb + r;
      if (n >= w.N) break;
      if (cb == 4) {
        bsr_row<V, MT, 4>(xT, w, col_idx, j0, j1, wbuf + r * cb, block, tile[filled]);
      } else {
        bsr_row<V, MT, 0>(xT, w, col_idx, j0, j1, wbuf + r * cb, block, tile[filled]);
      }
      if (++filled == kOutTile) {
        bsr_flush<V, MT>(tile, tile_n0, filled, m0, rows, w, relu, out);
        tile_n0 += filled;
        filled = 0;
      }
    }
  }
  if (filled > 0) bsr_flush<V, MT>(tile, tile_n0, filled, m0, rows, w, relu, out);
  return true;
}

template <typename V, int MT>
SQFX_WO_TARGET bool bsr_entry(const float* xT, int64_t m0, int64_t rows, const BsrWeight& w, bool relu,
                              float* out, int64_t rb_begin, int64_t rb_end, float* wbuf) {
  return w.col_idx_16
             ? bsr_chunk<V, MT>(xT, m0, rows, w, static_cast<const int16_t*>(w.col_idx), relu, out, rb_begin, rb_end, wbuf)
             : bsr_chunk<V, MT>(xT, m0, rows, w, static_cast<const int32_t*>(w.col_idx), relu, out, rb_begin, rb_end, wbuf);
}

}  // namespace
}  // namespace sqfx
