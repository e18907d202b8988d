// Token-batch sparse GEMM, 1x4 blocks, AVX2: register tile of 32 input rows x
// 1 output row; K and N cache blocking and the loop order are in
// gemm_1x4_driver.h. Exact without VNNI: the chunk's panel is widened to
// int16 once (kActBytes = 2); per 4 rows, vpmaddwd multiplies its 16 values
// with the block's 4 weights (as int16, repeated), summing pairs into int32 --
// no saturating vpmaddubsw. Two accumulators per 8 rows hold the pair sums;
// finish adds the pairs.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "epilogue_x86.h"
#include "kernels.h"
#include "panel_i16_avx2.h"

namespace sqfx {
namespace {

#define SQFX_GEMM_TARGET __attribute__((target("avx2,fma")))

struct MicroAvx2 {
  static constexpr int64_t kUnitRows = 8;
  static constexpr int kMaxUnits = 4;
  static constexpr bool kTwoSets = false;
  static constexpr int64_t kActBytes = 2;  // step() reads x86::widened_chunk's int16 copy
  static const uint8_t* act_panel(const PanelRows& a, int64_t chunk) {
    return reinterpret_cast<const uint8_t*>(x86::widened_chunk(a, chunk));
  }
  template <int U>
  struct Acc {
    __m256i v[2 * U];
  };
  template <int U>
  SQFX_GEMM_TARGET static inline void zero(Acc<U>& acc) {
    for (int u = 0; u < 2 * U; ++u) acc.v[u] = _mm256_setzero_si256();
  }
  template <int U>
  SQFX_GEMM_TARGET static inline void load(Acc<U>& acc, const int32_t* src) {
    for (int u = 0; u < 2 * U; ++u)
      acc.v[u] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 8 * u));
  }
  template <int U>
  SQFX_GEMM_TARGET static inline void store(const Acc<U>& acc, int32_t* dst) {
    for (int u = 0; u < 2 * U; ++u) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 8 * u), acc.v[u]);
  }
  template <int U>
  SQFX_GEMM_TARGET static inline void add(Acc<U>& acc, const Acc<U>& other) {
    for (int u = 0; u < 2 * U; ++u) acc.v[u] = _mm256_add_epi32(acc.v[u], other.v[u]);
  }
  template <int U>
  SQFX_GEMM_TARGET static inline void step(Acc<U>& acc, int32_t wdword, const uint8_t* src) {
    const __m256i w16 = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(wdword)));
    for (int u = 0; u < 2 * U; ++u) {
      const __m256i act = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32 * u));  // int16
      acc.v[u] = _mm256_add_epi32(acc.v[u], _mm256_madd_epi16(act, w16));
    }
  }
  template <int U>
  SQFX_GEMM_TARGET static inline void finish(const Acc<U>& acc, const int32_t* zp, const float* scale,
                                             const x86::OutRow& o, bool relu, float* dst) {
    for (int u = 0; u < U; ++u) {
      // lanes hold pair sums of rows 8u..8u+3 (v[2u]) and 8u+4..8u+7 (v[2u+1]), two per row
      const __m256i s = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc.v[2 * u], acc.v[2 * u + 1]), 0xD8);
      _mm256_storeu_ps(dst + 8 * u, x86::epilogue_m8_vec(s, zp + 8 * u, scale + 8 * u, o, relu));
    }
  }
  static constexpr int64_t kTr = 8;
  SQFX_GEMM_TARGET static inline void transpose(const float* src, int64_t lds, float* dst, int64_t ldd) {
    x86::transpose8x8(src, lds, dst, ldd);
  }
};

#include "gemm_1x4_driver.h"

}  // namespace

bool gemm_1x4_32x1_avx2(const PanelRows& a, int64_t chunk, const BsrWeight& w, float* out, bool relu,
                        int64_t rb_begin, int64_t rb_end) {
  return gemm_entry<MicroAvx2>(a, chunk, w, out, relu, rb_begin, rb_end);
}

}  // namespace sqfx
