// AVX-512 VNNI kernels for row blocks of 1 x cb, cb % 4 == 0 (sparse 1x4 and
// the dense 1 x K_padded layout). Same structure as bsr_1x4_avx2.cpp, but the
// products use vpdpbusd: u8 x s8, four products summed straight into int32
// lanes with no intermediate saturation, so the result is exact (int32
// accumulators, below kMaxInt32InFeatures).
//
// rows kernel: 1 input row: 8 blocks per step, activations gathered (ymm
//   vpgatherdd), one vpdpbusd; 2-3 rows (rows_flat16): activation dwords
//   copied with scalar loads into a buffer, then 16 blocks per zmm vpdpbusd;
//   contiguous 64-byte steps for wide blocks.
// panel kernel: a 1x4 block's weight dword is broadcast to 16 lanes and
//   multiplies 16 input rows per zmm load, up to 128 rows per output row pass.
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "bsr_1x4_x86.h"

namespace sqfx {
namespace {

using namespace x86;

#define SQFX_VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

inline int32_t dot4_scalar(const uint8_t* a, const int8_t* w) {
  return int32_t(a[0]) * w[0] + int32_t(a[1]) * w[1] + int32_t(a[2]) * w[2] +
         int32_t(a[3]) * w[3];
}


// Inclusive prefix sum of the 16 int32 lanes (lane i: x[0] + ... + x[i]).
SQFX_VNNI inline __m512i scan16(__m512i x) {
  const __m512i z = _mm512_setzero_si512();
  x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 15));
  x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 14));
  x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 12));
  return _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 8));
}

// Sparse 1x4, few input rows: the flat pass (bsr_1x4_x86.h). One input row:
// 8 blocks per step, activations gathered (ymm vpgatherdd), one vpdpbusd (it
// measured as fast as the buffered variant, ~220 us for 4096x4096 at 90%: the
// per-block activation load is the bound). 2-3 rows: the activation dwords
// pre-gathered once for all rows, then 16 blocks per zmm vpdpbusd (3 rows:
// 940 -> 635 us).
template <typename Index, int MT>
SQFX_VNNI bool rows_1x4(const QuantizedRows& a, const BsrWeight& w, const Index* col_idx,
                        float* out, bool relu, int64_t rb_begin, int64_t rb_end, int64_t m0) {
  const uint8_t* q = a.q + m0 * a.ld;
  if constexpr (MT == 1) {
    const __m256i max_idx = _mm256_set1_epi32(static_cast<int32_t>(w.n_col_blocks - 1));
    __m256i bad = _mm256_setzero_si256();
    const bool ok = flat_pass<1, 4096>(a, w, out, relu, rb_begin, rb_end, m0,
                                       [&](int64_t jb, int64_t je, int32_t* const* prefix,
                                           int32_t* const*) SQFX_VNNI {
      __m256i carry = _mm256_setzero_si256();
      for (int64_t j = jb; j < je; j += 8) {
        const int64_t rem = je - j;
        __m256i idx, wv;
        if (rem >= 8) {
          idx = load_idx8(col_idx + j, max_idx, &bad);
          wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.values + j * 4));
        } else {
          const __mmask8 live = static_cast<__mmask8>((1u << rem) - 1);
          __m256i raw;
          if constexpr (sizeof(Index) == 2) {
            raw = _mm256_cvtepi16_epi32(_mm_maskz_loadu_epi16(live, col_idx + j));
          } else {
            raw = _mm256_maskz_loadu_epi32(live, col_idx + j);
          }
          idx = _mm256_min_epi32(_mm256_max_epi32(raw, _mm256_setzero_si256()), max_idx);
          bad = _mm256_or_si256(bad, _mm256_xor_si256(raw, idx));
          wv = _mm256_maskz_loadu_epi32(live, w.values + j * 4);
        }
        __m256i g = _mm256_i32gather_epi32(reinterpret_cast<const int*>(q), idx, 4);
        __m256i d = _mm256_dpbusd_epi32(_mm256_setzero_si256(), g, wv);  // one dot per block
        __m256i sc = scan8(d, carry);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(prefix[0] + 1 + (j - jb)), sc);
        carry = last_lane(sc);
      }
      return true;
    });
    return ok && !any_bits(bad);
  } else {
    const __m512i last = _mm512_set1_epi32(15);
    return flat_pass<MT, 1024>(a, w, out, relu, rb_begin, rb_end, m0,
                               [&](int64_t jb, int64_t je, int32_t* const* prefix,
                                   int32_t* const* act) SQFX_VNNI {
      const bool piece_ok = gather_checked<Index, MT>(a, w, col_idx, m0, jb, je, act);
      const int64_t len = je - jb;
      __m512i carry[MT];
      for (int m = 0; m < MT; ++m) carry[m] = _mm512_setzero_si512();
      const int8_t* wvals = w.values + jb * 4;
      for (int64_t j = 0; j < len; j += 16) {
        const int64_t rem = len - j;
        const __mmask16 live = rem >= 16 ? static_cast<__mmask16>(0xFFFF)
                                         : static_cast<__mmask16>((1u << rem) - 1);
        const __m512i wv = _mm512_maskz_loadu_epi32(live, wvals + j * 4);
        for (int m = 0; m < MT; ++m) {
          const __m512i g = _mm512_maskz_loadu_epi32(live, act[m] + j);
          const __m512i local = scan16(_mm512_dpbusd_epi32(_mm512_setzero_si512(), g, wv));
          _mm512_storeu_si512(prefix[m] + 1 + j, _mm512_add_epi32(local, carry[m]));
          // the carry chain is one add per step; the lane broadcast is off it
          carry[m] = _mm512_add_epi32(carry[m], _mm512_permutexvar_epi32(last, local));
        }
      }
      return piece_ok;
    });
  }
}

// Wider row blocks (1x8, 1x16, the dense 1 x K_pad layout), few input rows:
// per block contiguous 64 / 32-byte steps.
template <typename Index, int MT>
SQFX_VNNI bool rows_wide(const QuantizedRows& a, const BsrWeight& w, const Index* col_idx,
                         float* out, bool relu, int64_t rb_begin, int64_t rb_end, int64_t m0) {
  const int64_t cb = w.col_block;
  bool ok = true;
  const uint8_t* q[MT];
  for (int m = 0; m < MT; ++m) q[m] = a.q + (m0 + m) * a.ld;
  alignas(32) int32_t sums[MT][8];
  int filled = 0;
  int64_t n_first = rb_begin;
  for (int64_t n = rb_begin; n < rb_end; ++n) {
    __m256i acc[MT];
    __m512i wide[MT];
    int32_t tail[MT];
    for (int m = 0; m < MT; ++m) {
      acc[m] = _mm256_setzero_si256();
      wide[m] = _mm512_setzero_si512();
      tail[m] = 0;
    }
    for (int64_t j = w.row_ptr[n]; j < w.row_ptr[n + 1]; ++j) {
      const int64_t col = static_cast<int64_t>(col_idx[j]);
      if (!col_ok(col, w.n_col_blocks)) { ok = false; continue; }
      const int8_t* v = w.values + j * cb;
      const int64_t off = col * cb;
      int64_t t = 0;
      for (; t + 64 <= cb; t += 64) {
        __m512i wv = _mm512_loadu_si512(v + t);
        for (int m = 0; m < MT; ++m)
          wide[m] = _mm512_dpbusd_epi32(wide[m], _mm512_loadu_si512(q[m] + off + t), wv);
      }
      if (t + 32 <= cb) {
        __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + t));
        for (int m = 0; m < MT; ++m)
          acc[m] = _mm256_dpbusd_epi32(
              acc[m], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[m] + off + t)), wv);
        t += 32;
      }
      for (; t < cb; t += 4) {
        for (int m = 0; m < MT; ++m) tail[m] += dot4_scalar(q[m] + off + t, v + t);
      }
    }
    for (int m = 0; m < MT; ++m) {
      __m256i folded = _mm256_add_epi32(_mm512_castsi512_si256(wide[m]),
                                        _mm512_extracti64x4_epi64(wide[m], 1));
      sums[m][filled] = hsum8(_mm256_add_epi32(acc[m], folded)) + tail[m];
    }
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
  return ok;
}

template <typename Index, int U>
SQFX_VNNI bool panel_tile(const PanelRows& a, const uint8_t* panel, int64_t m0,
                          int64_t rows, const BsrWeight& w, const Index* col_idx,
                          float* tile, int64_t n_tile, bool relu, int64_t n, int64_t ms) {
  const int64_t cb = w.col_block, nsub = cb / 4, stride = a.mc * 4;
  __m512i acc[U];
  for (int u = 0; u < U; ++u) acc[u] = _mm512_setzero_si512();
  bool ok = true;
  const int64_t end = w.row_ptr[n + 1];
  if (cb == 4) {
    const uint8_t* base = panel + ms * 4;
    const int32_t* wd = reinterpret_cast<const int32_t*>(w.values);
    for (int64_t j = w.row_ptr[n]; j < end; ++j) {
      const int64_t col = static_cast<int64_t>(col_idx[j]);
      if (!col_ok(col, w.n_col_blocks)) { ok = false; continue; }
      const __m512i wb = _mm512_set1_epi32(wd[j]);
      const uint8_t* src = base + col * stride;
      for (int u = 0; u < U; ++u)
        acc[u] = _mm512_dpbusd_epi32(acc[u], _mm512_loadu_si512(src + 64 * u), wb);
    }
  } else {
    for (int64_t j = w.row_ptr[n]; j < end; ++j) {
      const int64_t col = static_cast<int64_t>(col_idx[j]);
      if (!col_ok(col, w.n_col_blocks)) { ok = false; continue; }
      const int8_t* v = w.values + j * cb;
      const uint8_t* src = panel + col * nsub * stride + ms * 4;
      for (int64_t t = 0; t < nsub; ++t, v += 4, src += stride) {
        int32_t w4;
        std::memcpy(&w4, v, 4);
        __m512i wb = _mm512_set1_epi32(w4);
        for (int u = 0; u < U; ++u)
          acc[u] = _mm512_dpbusd_epi32(acc[u], _mm512_loadu_si512(src + 64 * u), wb);
      }
    }
  }
  for (int u = 0; u < U; ++u) {
    const int64_t r = ms + 16 * u;
    if (r >= rows) break;
    const int64_t count = rows - r < 16 ? rows - r : 16;
    x86::store_m16_avx512(acc[u], a.zp + m0 + r, a.scale + m0 + r, w, n, count, relu,
                 tile + r * kTileN + (n - n_tile));
  }
  return ok;
}

}  // namespace

bool bsr_1x4_rows_avx512vnni(const QuantizedRows& a, const BsrWeight& w, float* out,
                             bool relu, int64_t rb_begin, int64_t rb_end) {
  return with_index(w, [&](auto idx) {
    using Index = std::remove_const_t<std::remove_pointer_t<decltype(idx)>>;
    return for_row_tiles<3>(a.M, [&](auto mt, int64_t m0) {
      constexpr int MT = decltype(mt)::value;
      if (w.col_block == 4) return rows_1x4<Index, MT>(a, w, idx, out, relu, rb_begin, rb_end, m0);
      return rows_wide<Index, MT>(a, w, idx, out, relu, rb_begin, rb_end, m0);
    });
  });
}

bool bsr_1x4_panel_avx512vnni(const PanelRows& a, int64_t chunk, const BsrWeight& w,
                              float* out, bool relu, int64_t rb_begin, int64_t rb_end) {
  const uint8_t* panel = a.data + chunk * a.groups * a.mc * 4;
  return with_index(w, [&](auto idx) {
    using Index = std::remove_const_t<std::remove_pointer_t<decltype(idx)>>;
    return panel_loop<16, 8>(a, chunk, w, out, rb_begin, rb_end,
                             [&](auto units, int64_t m0, int64_t rows, int64_t ms, int64_t n,
                                 int64_t n_tile, float* tile) {
      return panel_tile<Index, decltype(units)::value>(a, panel, m0, rows, w, idx, tile, n_tile,
                                                       relu, n, ms);
    });
  });
}

}  // namespace sqfx
