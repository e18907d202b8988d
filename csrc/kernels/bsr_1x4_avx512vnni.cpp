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

#include "epilogue_x86.h"
#include "kernels.h"

namespace sqfx {
namespace {

using namespace x86;

#define SQFX_VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

inline int32_t dot4_scalar(const uint8_t* a, const int8_t* w) {
  return int32_t(a[0]) * w[0] + int32_t(a[1]) * w[1] + int32_t(a[2]) * w[2] +
         int32_t(a[3]) * w[3];
}


// Sparse 1x4, few input rows: a flat pass over all blocks of a group of rows,
// 8 blocks per step whatever row they belong to (no per-row loop whose
// variable trip count would mispredict and serialize the gathers), writing the
// running (prefix) sum of the block dot products; a row's accumulator is then
// the difference of two prefix sums.
template <typename Index, int MT>
SQFX_VNNI bool rows_flat(const QuantizedRows& a, const BsrWeight& w, const Index* col_idx,
                      float* out, bool relu, int64_t rb_begin, int64_t rb_end, int64_t m0) {
  constexpr int64_t kPiece = 4096;  // blocks per pass: prefix sums stay in L1
  thread_local std::vector<int32_t> buffer;
  const __m256i max_idx = _mm256_set1_epi32(static_cast<int32_t>(w.n_col_blocks - 1));
  __m256i bad = _mm256_setzero_si256();
  const uint8_t* q[MT];
  for (int m = 0; m < MT; ++m) q[m] = a.q + (m0 + m) * a.ld;
  alignas(32) int32_t sums[MT][8];
  int filled = 0;
  int64_t n_first = rb_begin;
  for (int64_t n = rb_begin; n < rb_end;) {
    const int64_t jb = w.row_ptr[n];
    int64_t n_end = n + 1;
    while (n_end < rb_end && w.row_ptr[n_end + 1] - jb <= kPiece) ++n_end;
    const int64_t je = w.row_ptr[n_end];
    const int64_t stride = je - jb + 9;
    if (static_cast<int64_t>(buffer.size()) < MT * stride) buffer.resize(MT * stride);
    int32_t* prefix[MT];
    __m256i carry[MT];
    for (int m = 0; m < MT; ++m) {
      prefix[m] = buffer.data() + m * stride;
      prefix[m][0] = 0;
      carry[m] = _mm256_setzero_si256();
    }
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
      for (int m = 0; m < MT; ++m) {
        __m256i g = _mm256_i32gather_epi32(reinterpret_cast<const int*>(q[m]), idx, 4);
        __m256i d = _mm256_dpbusd_epi32(_mm256_setzero_si256(), g, wv);  // one dot per block
        __m256i s = scan8(d, carry[m]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(prefix[m] + 1 + (j - jb)), s);
        carry[m] = last_lane(s);
      }
    }
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
  return !any_bits(bad);
}

// Inclusive prefix sum of the 16 int32 lanes (lane i: x[0] + ... + x[i]).
SQFX_VNNI inline __m512i scan16(__m512i x) {
  const __m512i z = _mm512_setzero_si512();
  x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 15));
  x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 14));
  x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 12));
  return _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 8));
}

// Stage 1 of rows_flat16: the activation dword of every block of a piece,
// copied with scalar loads into a contiguous buffer (on this AMD EPYC a
// scalar load + store per block beats vpgatherdd). The piece's block columns
// are range-checked first, vectorized; a piece holding a bad one is not read
// (its buffer is zeroed) and reported, the op then raises.
template <typename Index>
SQFX_VNNI inline bool piece_in_range(const Index* col_idx, int64_t len, uint32_t ncb) {
  __m512i hi = _mm512_setzero_si512();
  int64_t j = 0;
  if constexpr (sizeof(Index) == 2) {
    // negative int16 read as unsigned is >= 32768 >= ncb
    for (; j < len; j += 32) {
      const __mmask32 live = len - j >= 32 ? ~__mmask32(0) : (__mmask32(1) << (len - j)) - 1;
      hi = _mm512_max_epu16(hi, _mm512_maskz_loadu_epi16(live, col_idx + j));
    }
    const uint32_t limit = ncb < 32768u ? ncb : 32768u;  // int16 columns are < 32768
    return _mm512_cmpge_epu16_mask(hi, _mm512_set1_epi16(static_cast<short>(limit))) == 0;
  } else {
    for (; j < len; j += 16) {
      const __mmask16 live = len - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (len - j)) - 1);
      hi = _mm512_max_epu32(hi, _mm512_maskz_loadu_epi32(live, col_idx + j));
    }
    return _mm512_cmpge_epu32_mask(hi, _mm512_set1_epi32(static_cast<int32_t>(ncb))) == 0;
  }
}

template <typename Index, int MT>
__attribute__((optimize("no-tree-vectorize"))) inline void gather_piece(
    const uint8_t* const* q_in, const Index* __restrict col_idx, int64_t len,
    int32_t* const* dst_in) {
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

// Sparse 1x4, few input rows: per piece of ~kPiece blocks, the activation
// dwords are first copied into a contiguous buffer (gather_piece), then one
// flat pass, 16 blocks per step whatever row they belong to, computes the 16
// block dot products with one vpdpbusd and stores their running (prefix) sum;
// a row's accumulator is the difference of two prefix sums (wrapping int32
// arithmetic, exact because the true row sum fits int32).
template <typename Index, int MT>
SQFX_VNNI bool rows_flat16(const QuantizedRows& a, const BsrWeight& w, const Index* col_idx,
                           float* out, bool relu, int64_t rb_begin, int64_t rb_end, int64_t m0) {
  constexpr int64_t kPiece = 1024;  // blocks per pass: buffers stay in L1
  thread_local std::vector<int32_t> buffer;
  const uint32_t ncb = static_cast<uint32_t>(w.n_col_blocks);
  uint32_t bad = 0;
  const uint8_t* q[MT];
  for (int m = 0; m < MT; ++m) q[m] = a.q + (m0 + m) * a.ld;
  alignas(32) int32_t sums[MT][8];
  int filled = 0;
  int64_t n_first = rb_begin;
  const __m512i last = _mm512_set1_epi32(15);
  for (int64_t n = rb_begin; n < rb_end;) {
    const int64_t jb = w.row_ptr[n];
    int64_t n_end = n + 1;
    while (n_end < rb_end && w.row_ptr[n_end + 1] - jb <= kPiece) ++n_end;
    const int64_t je = w.row_ptr[n_end];
    const int64_t len = je - jb;
    const int64_t stride = len + 17;
    if (static_cast<int64_t>(buffer.size()) < 2 * MT * stride) buffer.resize(2 * MT * stride);
    int32_t* prefix[MT];
    int32_t* act[MT];
    __m512i carry[MT];
    for (int m = 0; m < MT; ++m) {
      prefix[m] = buffer.data() + m * stride;
      act[m] = buffer.data() + (MT + m) * stride;
      prefix[m][0] = 0;
      carry[m] = _mm512_setzero_si512();
    }
    if (piece_in_range(col_idx + jb, len, ncb)) {
      gather_piece<Index, MT>(q, col_idx + jb, len, act);
    } else {
      bad = 1;
      for (int m = 0; m < MT; ++m) std::memset(act[m], 0, len * sizeof(int32_t));
    }
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
  return bad == 0;
}

template <typename Index, int MT>
SQFX_VNNI bool rows_tile(const QuantizedRows& a, const BsrWeight& w,
                         const Index* col_idx, float* out, bool relu,
                         int64_t rb_begin, int64_t rb_end, int64_t m0) {
  const int64_t cb = w.col_block;
  if (cb == 4) {
    // One input row: the ymm-gather kernel measured as fast as rows_flat16
    // (both ~220 us for 4096x4096 at 90%, the per-block activation load is the
    // bound); 2-3 rows: rows_flat16 (3 rows: 940 -> 635 us).
    if constexpr (MT == 1) {
      return rows_flat<Index, MT>(a, w, col_idx, out, relu, rb_begin, rb_end, m0);
    } else {
      return rows_flat16<Index, MT>(a, w, col_idx, out, relu, rb_begin, rb_end, m0);
    }
  }
  const __m256i max_idx = _mm256_set1_epi32(static_cast<int32_t>(w.n_col_blocks - 1));
  __m256i bad = _mm256_setzero_si256();
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
    int64_t j = w.row_ptr[n];
    const int64_t end = w.row_ptr[n + 1];
    if (cb == 4) {
      for (; j + 8 <= end; j += 8) {
        __m256i idx = load_idx8(col_idx + j, max_idx, &bad);
        __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.values + j * 4));
        for (int m = 0; m < MT; ++m) {
          __m256i g = _mm256_i32gather_epi32(reinterpret_cast<const int*>(q[m]), idx, 4);
          acc[m] = _mm256_dpbusd_epi32(acc[m], g, wv);
        }
      }
      if (j < end) {
        // Tail of 1..7 blocks: masked loads (no fault, zeros) instead of a
        // scalar loop, whose variable trip count costs branch mispredictions.
        const __mmask8 live = static_cast<__mmask8>((1u << (end - j)) - 1);
        __m256i raw;
        if constexpr (sizeof(Index) == 2) {
          raw = _mm256_cvtepi16_epi32(_mm_maskz_loadu_epi16(live, col_idx + j));
        } else {
          raw = _mm256_maskz_loadu_epi32(live, col_idx + j);
        }
        __m256i idx = _mm256_min_epi32(_mm256_max_epi32(raw, _mm256_setzero_si256()), max_idx);
        bad = _mm256_or_si256(bad, _mm256_xor_si256(raw, idx));
        __m256i wv = _mm256_maskz_loadu_epi32(live, w.values + j * 4);
        for (int m = 0; m < MT; ++m) {
          __m256i g = _mm256_i32gather_epi32(reinterpret_cast<const int*>(q[m]), idx, 4);
          acc[m] = _mm256_dpbusd_epi32(acc[m], g, wv);
        }
      }
    } else {
      for (; j < end; ++j) {
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
  return ok && !any_bits(bad);
}

template <typename Index>
bool rows_impl(const QuantizedRows& a, const BsrWeight& w, const Index* idx,
               float* out, bool relu, int64_t rb_begin, int64_t rb_end) {
  bool ok = true;
  for (int64_t m0 = 0; m0 < a.M; m0 += 4) {
    switch (a.M - m0 >= 4 ? 4 : a.M - m0) {
      case 4: ok &= rows_tile<Index, 4>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
      case 3: ok &= rows_tile<Index, 3>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
      case 2: ok &= rows_tile<Index, 2>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
      default: ok &= rows_tile<Index, 1>(a, w, idx, out, relu, rb_begin, rb_end, m0); break;
    }
  }
  return ok;
}

// m-direction epilogue for 16 input rows (see epilogue_m8).
SQFX_VNNI inline void epilogue_m16(__m512i acc, const int32_t* zp, const float* a_scale,
                                   const BsrWeight& w, int64_t n, int64_t count,
                                   bool relu, float* dst) {
  __m512i corr = _mm512_sub_epi32(
      acc, _mm512_mullo_epi32(_mm512_loadu_si512(zp), _mm512_set1_epi32(w.w_sum[n])));
  __m512 s = _mm512_mul_ps(_mm512_loadu_ps(a_scale), _mm512_set1_ps(w.w_scale[n]));
  __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(corr), s);
  if (w.bias) v = _mm512_add_ps(v, _mm512_set1_ps(w.bias[n]));
  if (relu) {
    __m512 zero = _mm512_setzero_ps();
    v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), v, zero);
  }
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  for (int64_t l = 0; l < count; ++l) dst[l * x86::kTileN] = t[l];
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
    epilogue_m16(acc[u], a.zp + m0 + r, a.scale + m0 + r, w, n, count, relu,
                 tile + r * kTileN + (n - n_tile));
  }
  return ok;
}

template <typename Index>
bool panel_impl(const PanelRows& a, int64_t chunk, const BsrWeight& w,
                const Index* idx, float* out, bool relu, int64_t rb_begin,
                int64_t rb_end) {
  const int64_t m0 = chunk * a.mc;
  const int64_t rows = a.M - m0 < a.mc ? a.M - m0 : a.mc;
  const int64_t units = (rows + 15) / 16;
  const uint8_t* panel = a.data + chunk * a.groups * a.mc * 4;
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
    for (int64_t u = 0; u < units; u += 8) {
      const int64_t ms = u * 16;
      switch (units - u >= 8 ? 8 : units - u) {
        case 8: ok &= panel_tile<Index, 8>(a, panel, m0, rows, w, idx, tile, n_tile, relu, n, ms); break;
        case 7: ok &= panel_tile<Index, 7>(a, panel, m0, rows, w, idx, tile, n_tile, relu, n, ms); break;
        case 6: ok &= panel_tile<Index, 6>(a, panel, m0, rows, w, idx, tile, n_tile, relu, n, ms); break;
        case 5: ok &= panel_tile<Index, 5>(a, panel, m0, rows, w, idx, tile, n_tile, relu, n, ms); break;
        case 4: ok &= panel_tile<Index, 4>(a, panel, m0, rows, w, idx, tile, n_tile, relu, n, ms); break;
        case 3: ok &= panel_tile<Index, 3>(a, panel, m0, rows, w, idx, tile, n_tile, relu, n, ms); break;
        case 2: ok &= panel_tile<Index, 2>(a, panel, m0, rows, w, idx, tile, n_tile, relu, n, ms); break;
        default: ok &= panel_tile<Index, 1>(a, panel, m0, rows, w, idx, tile, n_tile, relu, n, ms); break;
      }
    }
  }
  if (rb_end > rb_begin) flush_tile(tile, rows, n_tile, rb_end - n_tile, w.N, out + m0 * w.N);
  return ok;
}

}  // namespace

bool bsr_1x4_rows_avx512vnni(const QuantizedRows& a, const BsrWeight& w, float* out,
                             bool relu, int64_t rb_begin, int64_t rb_end) {
  if (w.col_idx_16)
    return rows_impl(a, w, static_cast<const int16_t*>(w.col_idx), out, relu, rb_begin, rb_end);
  return rows_impl(a, w, static_cast<const int32_t*>(w.col_idx), out, relu, rb_begin, rb_end);
}

bool bsr_1x4_panel_avx512vnni(const PanelRows& a, int64_t chunk, const BsrWeight& w,
                              float* out, bool relu, int64_t rb_begin, int64_t rb_end) {
  if (w.col_idx_16)
    return panel_impl(a, chunk, w, static_cast<const int16_t*>(w.col_idx), out, relu, rb_begin, rb_end);
  return panel_impl(a, chunk, w, static_cast<const int32_t*>(w.col_idx), out, relu, rb_begin, rb_end);
}

}  // namespace sqfx
