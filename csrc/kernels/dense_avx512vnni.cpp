// AVX-512 VNNI dense int8 kernel for the dense layout (pack(layout="dense"):
// each output row one 1 x K_padded block, block column 0), large M.
//
// Activations come in the panel layout (PanelRows). Unlike the sparse 1x4
// panel kernel, all rows share the same columns, so the register tile covers
// 4 output rows x 4 vectors of 16 input rows: each activation load feeds 4
// vpdpbusd (one per output row), each broadcast weight dword 4. vpdpbusd sums
// u8 x s8 products into int32 exactly (no saturation).
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "epilogue_x86.h"
#include "kernels.h"

namespace sqfx {
namespace {

#define SQFX_VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

// NR output rows (n0..) x U vectors of 16 input rows (ms..) of one chunk.
template <int NR, int U>
SQFX_VNNI void micro_tile(const PanelRows& a, const uint8_t* panel, int64_t m0, int64_t rows,
                    const BsrWeight& w, float* tile, int64_t n_tile, bool relu, int64_t n0, int64_t ms) {
  const int64_t groups = w.col_block / 4, stride = a.mc * 4;
  __m512i acc[NR][U];
  for (int r = 0; r < NR; ++r)
    for (int u = 0; u < U; ++u) acc[r][u] = _mm512_setzero_si512();
  const int32_t* wrow[NR];
  for (int r = 0; r < NR; ++r)
    wrow[r] = reinterpret_cast<const int32_t*>(w.values + (n0 + r) * w.col_block);
  const uint8_t* src = panel + ms * 4;
  for (int64_t g = 0; g < groups; ++g, src += stride) {
    __m512i act[U];
    for (int u = 0; u < U; ++u) act[u] = _mm512_loadu_si512(src + 64 * u);
    for (int r = 0; r < NR; ++r) {
      const __m512i wb = _mm512_set1_epi32(wrow[r][g]);
      for (int u = 0; u < U; ++u) acc[r][u] = _mm512_dpbusd_epi32(acc[r][u], act[u], wb);
    }
  }
  for (int r = 0; r < NR; ++r) {
    for (int u = 0; u < U; ++u) {
      const int64_t row = ms + 16 * u;
      if (row >= rows) break;
      const int64_t count = rows - row < 16 ? rows - row : 16;
      x86::store_m16_avx512(acc[r][u], a.zp + m0 + row, a.scale + m0 + row, w, n0 + r, count, relu,
                tile + row * x86::kTileN + (n0 + r - n_tile));
    }
  }
}

template <int NR>
void rows_group(const PanelRows& a, const uint8_t* panel, int64_t m0, int64_t rows,
                const BsrWeight& w, float* tile, int64_t n_tile, bool relu, int64_t n0) {
  const int64_t units = (rows + 15) / 16;
  for (int64_t u = 0; u < units; u += 4) {
    const int64_t ms = u * 16;
    switch (units - u >= 4 ? 4 : units - u) {
      case 4: micro_tile<NR, 4>(a, panel, m0, rows, w, tile, n_tile, relu, n0, ms); break;
      case 3: micro_tile<NR, 3>(a, panel, m0, rows, w, tile, n_tile, relu, n0, ms); break;
      case 2: micro_tile<NR, 2>(a, panel, m0, rows, w, tile, n_tile, relu, n0, ms); break;
      default: micro_tile<NR, 1>(a, panel, m0, rows, w, tile, n_tile, relu, n0, ms); break;
    }
  }
}

}  // namespace

bool dense_panel_avx512vnni(const PanelRows& a, int64_t chunk, const BsrWeight& w, float* out,
                            bool relu, int64_t rb_begin, int64_t rb_end) {
  const int64_t m0 = chunk * a.mc;
  const int64_t rows = a.M - m0 < a.mc ? a.M - m0 : a.mc;
  const uint8_t* panel = a.data + chunk * a.groups * a.mc * 4;
  // The dense layout stores block column 0 in every row; check what we ignore.
  bool ok = true;
  for (int64_t n = rb_begin; n < rb_end; ++n)
    ok &= w.col_idx_16 ? static_cast<const int16_t*>(w.col_idx)[n] == 0
                       : static_cast<const int32_t*>(w.col_idx)[n] == 0;
  if (!ok) return false;
  thread_local std::vector<float> tile_buffer;
  constexpr int64_t kTileN = x86::kTileN;  // a multiple of 4
  if (static_cast<int64_t>(tile_buffer.size()) < a.mc * kTileN) tile_buffer.resize(a.mc * kTileN);
  float* tile = tile_buffer.data();
  for (int64_t n_tile = rb_begin; n_tile < rb_end; n_tile += kTileN) {
    const int64_t n_end = rb_end - n_tile < kTileN ? rb_end : n_tile + kTileN;
    int64_t n = n_tile;
    for (; n + 4 <= n_end; n += 4) rows_group<4>(a, panel, m0, rows, w, tile, n_tile, relu, n);
    for (; n < n_end; ++n) rows_group<1>(a, panel, m0, rows, w, tile, n_tile, relu, n);
    x86::flush_tile(tile, rows, n_tile, n_end - n_tile, w.N, out + m0 * w.N);
  }
  return true;
}

}  // namespace sqfx
