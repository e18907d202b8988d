// AVX-512 VNNI kernel for row blocks of rb x 1 with rb % 8 == 0 (8x1, 16x1...).
//
// Four blocks of a row block at once: their 8-byte weight columns are
// transposed (two byte unpacks, two word unpacks) into 8 dwords
// (w0[r], w1[r], w2[r], w3[r]), one per output row r; the four activations
// q[c0..c3] form one broadcast dword; vpdpbusd adds the four u8 x s8 products
// into each int32 lane exactly (no saturation). The transposed weights are
// reused for a tile of up to 8 input rows.
#include <immintrin.h>

#include <cstring>

#include "epilogue_x86.h"
#include "kernels.h"

namespace sqfx {
namespace {

using namespace x86;

#define SQFX_VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

template <typename Index, int MT>
SQFX_VNNI bool tile(const QuantizedRows& a, const BsrWeight& w, const Index* col_idx,
                    float* out, bool relu, int64_t rb_begin, int64_t rb_end, int64_t m0) {
  const int64_t rb = w.row_block;
  bool ok = true;
  const uint8_t* q[MT];
  for (int m = 0; m < MT; ++m) q[m] = a.q + (m0 + m) * a.ld;
  for (int64_t i = rb_begin; i < rb_end; ++i) {
    const int64_t begin = w.row_ptr[i], end = w.row_ptr[i + 1];
    for (int64_t r0 = 0; r0 < rb; r0 += 8) {
      const int64_t n0 = i * rb + r0;
      if (n0 >= w.N) break;
      __m256i acc[MT];
      for (int m = 0; m < MT; ++m) acc[m] = _mm256_setzero_si256();
      for (int64_t j = begin; j < end; j += 4) {
        int64_t c[4] = {0, 0, 0, 0};
        int64_t wv[4] = {0, 0, 0, 0};
        const int live = end - j >= 4 ? 4 : static_cast<int>(end - j);
        bool good = true;
        for (int k = 0; k < live; ++k) {
          c[k] = static_cast<int64_t>(col_idx[j + k]);
          good &= col_ok(c[k], w.n_col_blocks);
          std::memcpy(&wv[k], w.values + (j + k) * rb + r0, 8);
        }
        if (!good) {
          ok = false;
          break;
        }
        __m128i x01 = _mm_unpacklo_epi8(_mm_cvtsi64_si128(wv[0]), _mm_cvtsi64_si128(wv[1]));
        __m128i x23 = _mm_unpacklo_epi8(_mm_cvtsi64_si128(wv[2]), _mm_cvtsi64_si128(wv[3]));
        __m256i wq = _mm256_set_m128i(_mm_unpackhi_epi16(x01, x23), _mm_unpacklo_epi16(x01, x23));
        // Missing blocks (live < 4) have zero weights and read column 0.
        for (int m = 0; m < MT; ++m) {
          uint32_t av = uint32_t(q[m][c[0]]) | (uint32_t(q[m][c[1]]) << 8) |
                        (uint32_t(q[m][c[2]]) << 16) | (uint32_t(q[m][c[3]]) << 24);
          acc[m] = _mm256_dpbusd_epi32(acc[m], _mm256_set1_epi32(static_cast<int32_t>(av)), wq);
        }
      }
      const int64_t count = w.N - n0 < 8 ? w.N - n0 : 8;
      for (int m = 0; m < MT; ++m)
        epilogue_n8(acc[m], a.zp[m0 + m], a.scale[m0 + m], w, n0, count, relu,
                    out + (m0 + m) * w.N);
    }
  }
  return ok;
}

template <typename Index>
bool impl(const QuantizedRows& a, const BsrWeight& w, const Index* idx, float* out,
          bool relu, int64_t rb_begin, int64_t rb_end) {
  bool ok = true;
  for (int64_t m0 = 0; m0 < a.M; m0 += 8) {
    switch (a.M - m0 >= 8 ? 8 : a.M - m0) {
      case 8: ok &= tile<Index, 8>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
      case 7: ok &= tile<Index, 7>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
      case 6: ok &= tile<Index, 6>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
      case 5: ok &= tile<Index, 5>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
      case 4: ok &= tile<Index, 4>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
      case 3: ok &= tile<Index, 3>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
      case 2: ok &= tile<Index, 2>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
      default: ok &= tile<Index, 1>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
    }
  }
  return ok;
}

}  // namespace

bool bsr_8x1_avx512vnni(const QuantizedRows& a, const BsrWeight& w, float* out, bool relu,
                        int64_t rb_begin, int64_t rb_end) {
  if (w.col_idx_16)
    return impl(a, w, static_cast<const int16_t*>(w.col_idx), out, relu, rb_begin, rb_end);
  return impl(a, w, static_cast<const int32_t*>(w.col_idx), out, relu, rb_begin, rb_end);
}

}  // namespace sqfx
