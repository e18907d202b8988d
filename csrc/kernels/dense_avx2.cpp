// AVX2 dense int8 kernel for the dense layout (pack(layout="dense"): each
// output row one 1 x K_padded block, block column 0), large M.
//
// Activations come in the panel layout (PanelRows), widened to int16 once per
// chunk. All rows share the same columns, so the register tile covers 2 output
// rows x 2 groups of 8 input rows (1 at the chunk's end): each activation
// vector feeds 2 vpmaddwd. Products are exact: u8 and s8 widened to int16,
// vpmaddwd sums pairs into int32 (no saturating vpmaddubsw).
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "epilogue_x86.h"
#include "panel_i16_avx2.h"
#include "kernels.h"

namespace sqfx {
namespace {

using namespace x86;

#define SQFX_AVX2 __attribute__((target("avx2,fma")))

SQFX_AVX2 inline __m256i weight16(const int8_t* v) {
  int32_t w4;
  std::memcpy(&w4, v, 4);
  return _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(w4)));
}

// NR output rows x U units of 8 input rows (ms..) of one chunk; `panel`: the
// chunk widened to int16 (dense_panel_avx2), read straight into vpmaddwd.
template <int NR, int U>
SQFX_AVX2 void micro_tile(const PanelRows& a, const int16_t* panel, int64_t m0, int64_t rows,
                    const BsrWeight& w, float* tile, int64_t n_tile, bool relu, int64_t n0, int64_t ms) {
  const int64_t groups = w.col_block / 4, stride = a.mc * 4;
  __m256i acc[NR][2 * U];
  for (int r = 0; r < NR; ++r)
    for (int u = 0; u < 2 * U; ++u) acc[r][u] = _mm256_setzero_si256();
  const int16_t* src = panel + ms * 4;
  const int8_t* wv = w.values + n0 * w.col_block;
  for (int64_t g = 0; g < groups; ++g, src += stride) {
    for (int r = 0; r < NR; ++r) {
      const __m256i w16 = weight16(wv + r * w.col_block + 4 * g);
      for (int u = 0; u < 2 * U; ++u) {
        const __m256i act = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 16 * u));
        acc[r][u] = _mm256_add_epi32(acc[r][u], _mm256_madd_epi16(act, w16));
      }
    }
  }
  for (int r = 0; r < NR; ++r) {
    for (int u = 0; u < U; ++u) {
      const int64_t row = ms + 8 * u;
      if (row >= rows) break;
      __m256i s = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][2 * u], acc[r][2 * u + 1]), 0xD8);
      const int64_t count = rows - row < 8 ? rows - row : 8;
      epilogue_m8(s, a.zp + m0 + row, a.scale + m0 + row, w, n0 + r, count, relu,
                  tile + row * kTileN + (n0 + r - n_tile), kTileN);
    }
  }
}

// Passes of 2 units (16 rows: 2 x 4 accumulators). 3 units (12 accumulators) made gcc spill
// them to the stack and ran 1.2x slower (AMD Zen1, 4 shapes at M = 32-512).
template <int NR>
void rows_group(const PanelRows& a, const int16_t* panel, int64_t m0, int64_t rows,
                const BsrWeight& w, float* tile, int64_t n_tile, bool relu, int64_t n0) {
  const int64_t units = (rows + 7) / 8;
  int64_t u = 0;
  for (; u + 2 <= units; u += 2) micro_tile<NR, 2>(a, panel, m0, rows, w, tile, n_tile, relu, n0, u * 8);
  if (units - u == 1) micro_tile<NR, 1>(a, panel, m0, rows, w, tile, n_tile, relu, n0, u * 8);
}

}  // namespace

bool dense_panel_avx2(const PanelRows& a, int64_t chunk, const BsrWeight& w, float* out,
                      bool relu, int64_t rb_begin, int64_t rb_end) {
  const int64_t m0 = chunk * a.mc;
  const int64_t rows = a.M - m0 < a.mc ? a.M - m0 : a.mc;
  bool ok = true;
  for (int64_t n = rb_begin; n < rb_end; ++n)
    ok &= w.col_idx_16 ? static_cast<const int16_t*>(w.col_idx)[n] == 0
                       : static_cast<const int32_t*>(w.col_idx)[n] == 0;
  if (!ok) return false;
  thread_local std::vector<float> tile_buffer;
  constexpr int64_t kTileN = x86::kTileN;  // a multiple of 2
  if (static_cast<int64_t>(tile_buffer.size()) < a.mc * kTileN) tile_buffer.resize(a.mc * kTileN);
  float* tile = tile_buffer.data();
  const int16_t* panel = widened_chunk(a, chunk);
  for (int64_t n_tile = rb_begin; n_tile < rb_end; n_tile += kTileN) {
    const int64_t n_end = rb_end - n_tile < kTileN ? rb_end : n_tile + kTileN;
    int64_t n = n_tile;
    for (; n + 2 <= n_end; n += 2) rows_group<2>(a, panel, m0, rows, w, tile, n_tile, relu, n);
    for (; n < n_end; ++n) rows_group<1>(a, panel, m0, rows, w, tile, n_tile, relu, n);
    x86::flush_tile(tile, rows, n_tile, n_end - n_tile, w.N, out + m0 * w.N);
  }
  return true;
}

}  // namespace sqfx
