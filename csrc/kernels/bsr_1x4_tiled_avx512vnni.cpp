// AVX-512 VNNI kernel for the small-M tiled layout of 1x4 weights (kernels.h,
// TiledWeight; built by bsr_1x4_tiled.cpp). No gathers and no reductions: a
// step is 16 weight dwords (lane = output row) and 16
// local dword indices; per input row it costs two loads of the activation
// window (32 dwords at step_col), one vpermi2d picking each lane's dword and
// one vpdpbusd into that row's accumulator. Up to 8 input rows share a pass
// over the weights.
#include <immintrin.h>

#include "bsr_1x4_x86.h"

namespace sqfx {
namespace {

using namespace x86;

#define SQFX_VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

template <int MT>
SQFX_VNNI bool tiled_rows(const QuantizedRows& a, const BsrWeight& w, float* out, bool relu,
                          int64_t tile_begin, int64_t tile_end, int64_t m0) {
  const TiledWeight& tw = *w.tiled;
  const uint8_t* q[MT];
  for (int m = 0; m < MT; ++m) q[m] = a.q + (m0 + m) * a.ld;
  TileLanes lanes;
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    // Two accumulators per input row, alternating steps: with few rows one
    // vpdpbusd chain per row would be latency-bound.
    __m512i acc[MT], acc2[MT];
    for (int m = 0; m < MT; ++m) acc[m] = acc2[m] = _mm512_setzero_si512();
    const int64_t s_end = tw.tile_ptr[t + 1];
    int64_t s = tw.tile_ptr[t];
    const int8_t* ws = tw.slot_w + s * 4 * kTiledLanes;
    const uint8_t* is = tw.slot_idx + s * kTiledLanes;
    const int32_t* cs = tw.step_col + s;
    for (; s + 2 <= s_end; s += 2, ws += 8 * kTiledLanes, is += 2 * kTiledLanes, cs += 2) {
      const __m512i w0 = _mm512_loadu_si512(ws), w1 = _mm512_loadu_si512(ws + 4 * kTiledLanes);
      const __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(is)));
      const __m512i i1 =
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(is + kTiledLanes)));
      const int64_t c0 = 4 * static_cast<int64_t>(cs[0]), c1 = 4 * static_cast<int64_t>(cs[1]);
      for (int m = 0; m < MT; ++m) {
        const uint8_t* a0 = q[m] + c0;
        const uint8_t* a1 = q[m] + c1;
        acc[m] = _mm512_dpbusd_epi32(
            acc[m], _mm512_permutex2var_epi32(_mm512_loadu_si512(a0), i0, _mm512_loadu_si512(a0 + 64)), w0);
        acc2[m] = _mm512_dpbusd_epi32(
            acc2[m], _mm512_permutex2var_epi32(_mm512_loadu_si512(a1), i1, _mm512_loadu_si512(a1 + 64)), w1);
      }
    }
    if (s < s_end) {
      const __m512i w0 = _mm512_loadu_si512(ws);
      const __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(is)));
      for (int m = 0; m < MT; ++m) {
        const uint8_t* a0 = q[m] + 4 * static_cast<int64_t>(cs[0]);
        acc[m] = _mm512_dpbusd_epi32(
            acc[m], _mm512_permutex2var_epi32(_mm512_loadu_si512(a0), i0, _mm512_loadu_si512(a0 + 64)), w0);
      }
    }
    for (int m = 0; m < MT; ++m) acc[m] = _mm512_add_epi32(acc[m], acc2[m]);
    tile_lanes(w, t, &lanes);
    for (int m = 0; m < MT; ++m) {
      float* y = out + (m0 + m) * w.N;
      const int32_t zp = a.zp[m0 + m];
      const float sc = a.scale[m0 + m];
      store_lanes8(_mm512_castsi512_si256(acc[m]), zp, sc, lanes, 0, w.bias != nullptr, relu, y);
      store_lanes8(_mm512_extracti64x4_epi64(acc[m], 1), zp, sc, lanes, 1, w.bias != nullptr, relu, y);
    }
  }
  return true;
}

}  // namespace

bool bsr_1x4_tiled_avx512vnni(const QuantizedRows& a, const BsrWeight& w, float* out, bool relu,
                              int64_t tile_begin, int64_t tile_end) {
  return for_row_tiles<8>(a.M, [&](auto mt, int64_t m0) {
    return tiled_rows<decltype(mt)::value>(a, w, out, relu, tile_begin, tile_end, m0);
  });
}

}  // namespace sqfx
