// AVX-512 VNNI dense int8 kernels for the dense layout (pack(layout="dense"):
// each output row one 1 x K_padded block, block column 0).
//
// rows kernel (few input rows: M 4-32, to 128 at long K; dispatch.cpp): row-major activations, register tile
// of 4 input rows x 4 output rows with vectors along K: each 64-byte load of a
// weight row feeds 4 vpdpbusd, each activation load 4, and every lane is a real
// product (the panel kernel's 16-row vectors are half empty at M = 8). The 16
// accumulators are reduced once per tile, after the whole K loop.
//
// panel kernel (large M): activations in the panel layout (PanelRows). Unlike the sparse 1x4
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

// Sums of 4 accumulators (the 16 int32 lanes of each) per input row: for
// acc[m][i] (m, i < 4), returns r with r[4 * i + m] = sum of acc[m][i].
SQFX_VNNI __attribute__((always_inline)) inline __m512i reduce_4x4(const __m512i (&acc)[4][4]) {
  __m512i u[4];
  for (int m = 0; m < 4; ++m) {
    // 512 -> 256 bits per accumulator, two at a time: [a0 folded | a1 folded]
    const __m512i t01 = _mm512_add_epi32(_mm512_shuffle_i64x2(acc[m][0], acc[m][1], 0x44),
                                         _mm512_shuffle_i64x2(acc[m][0], acc[m][1], 0xEE));
    const __m512i t23 = _mm512_add_epi32(_mm512_shuffle_i64x2(acc[m][2], acc[m][3], 0x44),
                                         _mm512_shuffle_i64x2(acc[m][2], acc[m][3], 0xEE));
    // 256 -> 128: 128-bit lane i holds 4 partial sums of acc[m][i]
    u[m] = _mm512_add_epi32(_mm512_shuffle_i64x2(t01, t23, 0x88), _mm512_shuffle_i64x2(t01, t23, 0xDD));
  }
  // 4 x 4 transpose-add inside each 128-bit lane: element m of lane i = sum of u[m]'s lane i
  const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(u[0], u[1]), _mm512_unpackhi_epi32(u[0], u[1]));
  const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(u[2], u[3]), _mm512_unpackhi_epi32(u[2], u[3]));
  return _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
}

// MR input rows (m0..) x NR output rows (n0..), the whole K loop, then the epilogue.
template <int MR, int NR>
SQFX_VNNI void rows_tile(const QuantizedRows& a, const BsrWeight& w, float* out, bool relu,
                         int64_t m0, int64_t n0) {
  const int64_t cb = w.col_block;
  const uint8_t* q[MR];
  const int8_t* v[NR];
  for (int m = 0; m < MR; ++m) q[m] = a.q + (m0 + m) * a.ld;
  for (int i = 0; i < NR; ++i) v[i] = w.values + (n0 + i) * cb;
  // One loop for the whole row: the last step's masked loads (cb % 64 bytes, whole dwords)
  // read nothing past it.
  const __mmask64 tail = (cb % 64) ? (~0ULL) >> (64 - cb % 64) : ~0ULL;
  __m512i acc[4][4];
  if constexpr (MR == 4 && NR == 4) {
    // Named accumulators: gcc keeps a 16-zmm array in memory (its scalarization stops at
    // 1 KB), which made every step store and reload all of them.
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00,
            c12 = c00, c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00,
            c32 = c00, c33 = c00;
    for (int64_t k = 0; k < cb; k += 64) {
      const __mmask64 live = k + 64 <= cb ? ~0ULL : tail;
      const __m512i w0 = _mm512_maskz_loadu_epi8(live, v[0] + k), w1 = _mm512_maskz_loadu_epi8(live, v[1] + k),
                    w2 = _mm512_maskz_loadu_epi8(live, v[2] + k), w3 = _mm512_maskz_loadu_epi8(live, v[3] + k);
      __m512i av = _mm512_maskz_loadu_epi8(live, q[0] + k);
      c00 = _mm512_dpbusd_epi32(c00, av, w0); c01 = _mm512_dpbusd_epi32(c01, av, w1);
      c02 = _mm512_dpbusd_epi32(c02, av, w2); c03 = _mm512_dpbusd_epi32(c03, av, w3);
      av = _mm512_maskz_loadu_epi8(live, q[1] + k);
      c10 = _mm512_dpbusd_epi32(c10, av, w0); c11 = _mm512_dpbusd_epi32(c11, av, w1);
      c12 = _mm512_dpbusd_epi32(c12, av, w2); c13 = _mm512_dpbusd_epi32(c13, av, w3);
      av = _mm512_maskz_loadu_epi8(live, q[2] + k);
      c20 = _mm512_dpbusd_epi32(c20, av, w0); c21 = _mm512_dpbusd_epi32(c21, av, w1);
      c22 = _mm512_dpbusd_epi32(c22, av, w2); c23 = _mm512_dpbusd_epi32(c23, av, w3);
      av = _mm512_maskz_loadu_epi8(live, q[3] + k);
      c30 = _mm512_dpbusd_epi32(c30, av, w0); c31 = _mm512_dpbusd_epi32(c31, av, w1);
      c32 = _mm512_dpbusd_epi32(c32, av, w2); c33 = _mm512_dpbusd_epi32(c33, av, w3);
    }
    acc[0][0] = c00; acc[0][1] = c01; acc[0][2] = c02; acc[0][3] = c03;
    acc[1][0] = c10; acc[1][1] = c11; acc[1][2] = c12; acc[1][3] = c13;
    acc[2][0] = c20; acc[2][1] = c21; acc[2][2] = c22; acc[2][3] = c23;
    acc[3][0] = c30; acc[3][1] = c31; acc[3][2] = c32; acc[3][3] = c33;
  } else {  // edge tiles (M % 4 input rows, N % 4 output rows)
    for (int m = 0; m < 4; ++m)
      for (int i = 0; i < 4; ++i) acc[m][i] = _mm512_setzero_si512();
    for (int64_t k = 0; k < cb; k += 64) {
      const __mmask64 live = k + 64 <= cb ? ~0ULL : tail;
      __m512i wv[NR];
      for (int i = 0; i < NR; ++i) wv[i] = _mm512_maskz_loadu_epi8(live, v[i] + k);
      for (int m = 0; m < MR; ++m) {
        const __m512i av = _mm512_maskz_loadu_epi8(live, q[m] + k);
        for (int i = 0; i < NR; ++i) acc[m][i] = _mm512_dpbusd_epi32(acc[m][i], av, wv[i]);
      }
    }
  }
  const __m512i sums = reduce_4x4(acc);  // lane 4 * i + m: output (m0 + m, n0 + i)
  if constexpr (MR == 4 && NR == 4) {
    // The epilogue on all 16 outputs at once, in the same float32 operations as sqfx::epilogue.
    const __m512i by_m = _mm512_set_epi32(3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0);
    const __m512i by_i = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i zp = _mm512_permutexvar_epi32(by_m, _mm512_castsi128_si512(_mm_loadu_si128(
                                                          reinterpret_cast<const __m128i*>(a.zp + m0))));
    const __m512 a_scale = _mm512_permutexvar_ps(by_m, _mm512_castps128_ps512(_mm_loadu_ps(a.scale + m0)));
    const __m512i w_sum = _mm512_permutexvar_epi32(by_i, _mm512_castsi128_si512(_mm_loadu_si128(
                                                             reinterpret_cast<const __m128i*>(w.w_sum + n0))));
    const __m512 w_scale = _mm512_permutexvar_ps(by_i, _mm512_castps128_ps512(_mm_loadu_ps(w.w_scale + n0)));
    const __m512i corr = _mm512_sub_epi32(sums, _mm512_mullo_epi32(zp, w_sum));
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(corr), _mm512_mul_ps(a_scale, w_scale));
    if (w.bias)
      y = _mm512_add_ps(y, _mm512_permutexvar_ps(by_i, _mm512_castps128_ps512(_mm_loadu_ps(w.bias + n0))));
    if (relu) {
      const __m512 zero = _mm512_setzero_ps();
      y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(y, zero, _CMP_LT_OQ), y, zero);  // keeps NaN
    }
    // lane 4 * i + m -> lane 4 * m + i: each 128-bit lane one input row's 4 outputs
    y = _mm512_permutexvar_ps(_mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0), y);
    float* dst = out + m0 * w.N + n0;
    _mm_storeu_ps(dst, _mm512_castps512_ps128(y));
    _mm_storeu_ps(dst + w.N, _mm512_extractf32x4_ps(y, 1));
    _mm_storeu_ps(dst + 2 * w.N, _mm512_extractf32x4_ps(y, 2));
    _mm_storeu_ps(dst + 3 * w.N, _mm512_extractf32x4_ps(y, 3));
  } else {
    alignas(64) int32_t s[16];
    _mm512_store_si512(s, sums);
    for (int m = 0; m < MR; ++m)
      for (int i = 0; i < NR; ++i)
        out[(m0 + m) * w.N + n0 + i] = epilogue(s[4 * i + m], a.zp[m0 + m], w.w_sum[n0 + i],
                                                a.scale[m0 + m], w.w_scale[n0 + i], w.bias, n0 + i, relu);
  }
}

template <int NR>
SQFX_VNNI void rows_group(const QuantizedRows& a, const BsrWeight& w, float* out, bool relu, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= a.M; m += 4) rows_tile<4, NR>(a, w, out, relu, m, n0);
  switch (a.M - m) {
    case 3: rows_tile<3, NR>(a, w, out, relu, m, n0); break;
    case 2: rows_tile<2, NR>(a, w, out, relu, m, n0); break;
    case 1: rows_tile<1, NR>(a, w, out, relu, m, n0); break;
    default: break;
  }
}

template <int NR>
void panel_group(const PanelRows& a, const uint8_t* panel, int64_t m0, int64_t rows,
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

// The dense layout stores block column 0 in every row; its kernels ignore col_idx, so they
// check that it is 0 for their rows [rb_begin, rb_end).
bool block_columns_zero(const BsrWeight& w, int64_t rb_begin, int64_t rb_end) {
  bool ok = true;
  for (int64_t n = rb_begin; n < rb_end; ++n)
    ok &= w.col_idx_16 ? static_cast<const int16_t*>(w.col_idx)[n] == 0
                       : static_cast<const int32_t*>(w.col_idx)[n] == 0;
  return ok;
}

}  // namespace

bool dense_panel_avx512vnni(const PanelRows& a, int64_t chunk, const BsrWeight& w, float* out,
                            bool relu, int64_t rb_begin, int64_t rb_end) {
  const int64_t m0 = chunk * a.mc;
  const int64_t rows = a.M - m0 < a.mc ? a.M - m0 : a.mc;
  const uint8_t* panel = a.data + chunk * a.groups * a.mc * 4;
  if (!block_columns_zero(w, rb_begin, rb_end)) return false;
  thread_local std::vector<float> tile_buffer;
  constexpr int64_t kTileN = x86::kTileN;  // a multiple of 4
  if (static_cast<int64_t>(tile_buffer.size()) < a.mc * kTileN) tile_buffer.resize(a.mc * kTileN);
  float* tile = tile_buffer.data();
  for (int64_t n_tile = rb_begin; n_tile < rb_end; n_tile += kTileN) {
    const int64_t n_end = rb_end - n_tile < kTileN ? rb_end : n_tile + kTileN;
    int64_t n = n_tile;
    for (; n + 4 <= n_end; n += 4) panel_group<4>(a, panel, m0, rows, w, tile, n_tile, relu, n);
    for (; n < n_end; ++n) panel_group<1>(a, panel, m0, rows, w, tile, n_tile, relu, n);
    x86::flush_tile(tile, rows, n_tile, n_end - n_tile, w.N, out + m0 * w.N);
  }
  return true;
}

bool dense_rows_avx512vnni(const QuantizedRows& a, const BsrWeight& w, float* out, bool relu,
                           int64_t rb_begin, int64_t rb_end) {
  if (!block_columns_zero(w, rb_begin, rb_end)) return false;
  // Output rows outer: a group's 4 weight rows (4 x K_pad bytes) stay in L1 while every input
  // row passes over them, so the weights are read from memory once per call.
  int64_t n = rb_begin;
  for (; n + 4 <= rb_end; n += 4) rows_group<4>(a, w, out, relu, n);
  for (; n < rb_end; ++n) rows_group<1>(a, w, out, relu, n);
  return true;
}

}  // namespace sqfx
