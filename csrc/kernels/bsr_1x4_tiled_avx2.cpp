// AVX2 kernel for the small-M tiled layout of 1x4 weights (kernels.h,
// TiledWeight). AVX2 permutes only 8 dwords: a lane's dword is picked from the
// 32-dword window by four vpermd (one per quarter) and two levels of blendv
// keyed on bits 3 and 4 of its local index (shifted to the sign bit once per
// step). Products as in bsr_1x4_avx2.cpp: both operands widened to int16 and
// vpmaddwd (exact, no vpmaddubsw saturation); the pair sums of each lane stay
// in two accumulators per 8 lanes and are added once per tile. Up to 2 input
// rows share a pass over the weights (register budget: 4 accumulators a row).
#include <immintrin.h>

#include "bsr_1x4_x86.h"

namespace sqfx {
namespace {

using namespace x86;

#define SQFX_AVX2 __attribute__((target("avx2,fma")))

template <int MT>
SQFX_AVX2 bool tiled_rows(const QuantizedRows& a, const BsrWeight& w, float* out, bool relu,
                          int64_t tile_begin, int64_t tile_end, int64_t m0) {
  const TiledWeight& tw = *w.tiled;
  const uint8_t* q[MT];
  for (int m = 0; m < MT; ++m) q[m] = a.q + (m0 + m) * a.ld;
  TileLanes lanes;
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    __m256i acc[MT][2][2];
    for (int m = 0; m < MT; ++m)
      for (int h = 0; h < 2; ++h) acc[m][h][0] = acc[m][h][1] = _mm256_setzero_si256();
    const int64_t s_end = tw.tile_ptr[t + 1];
    for (int64_t s = tw.tile_ptr[t]; s < s_end; ++s) {
      const int8_t* ws = tw.slot_w + s * 4 * kTiledLanes;
      const uint8_t* is = tw.slot_idx + s * kTiledLanes;
      const int64_t col = tw.step_col[s];  // checked by the op
      for (int h = 0; h < 2; ++h) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ws + 32 * h));
        const __m256i wlo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(wv));
        const __m256i whi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(wv, 1));
        const __m256i idx = _mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(is + 8 * h)));
        const __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
        const __m256 bit4 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 27));
        for (int m = 0; m < MT; ++m) {
          const __m256i* win = reinterpret_cast<const __m256i*>(q[m] + 4 * col);
          const __m256 p0 = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(_mm256_loadu_si256(win), idx));
          const __m256 p1 = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(_mm256_loadu_si256(win + 1), idx));
          const __m256 p2 = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(_mm256_loadu_si256(win + 2), idx));
          const __m256 p3 = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(_mm256_loadu_si256(win + 3), idx));
          const __m256i av = _mm256_castps_si256(
              _mm256_blendv_ps(_mm256_blendv_ps(p0, p1, bit3), _mm256_blendv_ps(p2, p3, bit3), bit4));
          const __m256i lo = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(av)), wlo);
          const __m256i hi = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(av, 1)), whi);
          acc[m][h][0] = _mm256_add_epi32(acc[m][h][0], lo);
          acc[m][h][1] = _mm256_add_epi32(acc[m][h][1], hi);
        }
      }
    }
    tile_lanes(w, t, &lanes);
    for (int m = 0; m < MT; ++m) {
      float* y = out + (m0 + m) * w.N;
      for (int h = 0; h < 2; ++h) {
        // lanes of acc[..][0]: blocks 0-3 of the half, two pair sums each; [1]: blocks 4-7
        const __m256i sums =
            _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[m][h][0], acc[m][h][1]), 0xD8);
        store_lanes8(sums, a.zp[m0 + m], a.scale[m0 + m], lanes, h, w.bias != nullptr, relu, y);
      }
    }
  }
  return true;
}

}  // namespace

bool bsr_1x4_tiled_avx2(const QuantizedRows& a, const BsrWeight& w, float* out, bool relu,
                        int64_t tile_begin, int64_t tile_end) {
  return for_row_tiles<2>(a.M, [&](auto mt, int64_t m0) {
    return tiled_rows<decltype(mt)::value>(a, w, out, relu, tile_begin, tile_end, m0);
  });
}

}  // namespace sqfx
