// AVX2 kernel for row blocks of rb x 1 with rb % 8 == 0 (8x1, 16x1, ...).
//
// A block is 8 (or 16...) output rows times one input column. Two blocks of
// a row block are taken at once: their 8-byte weight columns are interleaved
// and widened to int16 pairs (w0[r], w1[r]); the two activations q[c0], q[c1]
// form one broadcast int16 pair; vpmaddwd then gives, exactly in int32,
// w0[r] q[c0] + w1[r] q[c1] for the 8 output rows r (no saturating
// vpmaddubsw). Weights are widened once per block pair and reused for a tile
// of up to 8 input rows; results are 8 consecutive outputs of one input row,
// so the epilogue stores contiguous vectors.
#include <immintrin.h>

#include <cstring>

#include "epilogue_x86.h"
#include "kernels.h"

namespace sqfx {
namespace {

using namespace x86;

#define SQFX_AVX2 __attribute__((target("avx2,fma")))

template <typename Index, int MT>
SQFX_AVX2 bool tile(const QuantizedRows& a, const BsrWeight& w, const Index* col_idx,
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
      int64_t j = begin;
      for (; j < end; j += 2) {
        int64_t c0 = static_cast<int64_t>(col_idx[j]);
        int64_t c1 = j + 1 < end ? static_cast<int64_t>(col_idx[j + 1]) : 0;
        if (!col_ok(c0, w.n_col_blocks) || !col_ok(c1, w.n_col_blocks)) {
          ok = false;
          break;
        }
        int64_t w0, w1 = 0;
        std::memcpy(&w0, w.values + j * rb + r0, 8);
        if (j + 1 < end) std::memcpy(&w1, w.values + (j + 1) * rb + r0, 8);
        __m128i pair = _mm_unpacklo_epi8(_mm_cvtsi64_si128(w0), _mm_cvtsi64_si128(w1));
        __m256i wp = _mm256_cvtepi8_epi16(pair);
        const int32_t hi_mask = j + 1 < end ? 0xffff : 0;
        for (int m = 0; m < MT; ++m) {
          int32_t av = int32_t(q[m][c0]) | ((int32_t(q[m][c1]) << 16) & (hi_mask << 16));
          acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(_mm256_set1_epi32(av), wp));
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

bool bsr_8x1_avx2(const QuantizedRows& a, const BsrWeight& w, float* out, bool relu,
                  int64_t rb_begin, int64_t rb_end) {
  if (w.col_idx_16)
    return impl(a, w, static_cast<const int16_t*>(w.col_idx), out, relu, rb_begin, rb_end);
  return impl(a, w, static_cast<const int32_t*>(w.col_idx), out, relu, rb_begin, rb_end);
}

}  // namespace sqfx
