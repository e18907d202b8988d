// Token-batch sparse GEMM, 1x4 blocks, AVX-512 VNNI: register tile of 64 input
// rows (4 zmm of 16 rows) x 1 output row; K and N cache blocking and the loop
// order are in gemm_1x4_driver.h. Per 1x4 block: one broadcast weight dword,
// 4 zmm loads of the panel, 4 vpdpbusd (u8 x s8 summed in int32, exact: no
// intermediate saturation).
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "epilogue_x86.h"
#include "kernels.h"

namespace sqfx {
namespace {

#define SQFX_GEMM_TARGET __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

struct MicroVnni {
  static constexpr int64_t kUnitRows = 16;
  static constexpr int kMaxUnits = 4;
  static constexpr bool kTwoSets = true;
  static constexpr int64_t kActBytes = 1;  // vpdpbusd reads the u8 panel
  static const uint8_t* act_panel(const PanelRows& a, int64_t chunk) {
    return a.data + chunk * a.groups * a.mc * 4;
  }
  template <int U>
  struct Acc {
    __m512i v[U];
  };
  template <int U>
  SQFX_GEMM_TARGET static inline void zero(Acc<U>& acc) {
    for (int u = 0; u < U; ++u) acc.v[u] = _mm512_setzero_si512();
  }
  template <int U>
  SQFX_GEMM_TARGET static inline void load(Acc<U>& acc, const int32_t* src) {
    for (int u = 0; u < U; ++u) acc.v[u] = _mm512_loadu_si512(src + 16 * u);
  }
  template <int U>
  SQFX_GEMM_TARGET static inline void store(const Acc<U>& acc, int32_t* dst) {
    for (int u = 0; u < U; ++u) _mm512_storeu_si512(dst + 16 * u, acc.v[u]);
  }
  template <int U>
  SQFX_GEMM_TARGET static inline void add(Acc<U>& acc, const Acc<U>& other) {
    for (int u = 0; u < U; ++u) acc.v[u] = _mm512_add_epi32(acc.v[u], other.v[u]);
  }
  template <int U>
  SQFX_GEMM_TARGET static inline void step(Acc<U>& acc, int32_t wdword, const uint8_t* src) {
    const __m512i wb = _mm512_set1_epi32(wdword);
    for (int u = 0; u < U; ++u)
      acc.v[u] = _mm512_dpbusd_epi32(acc.v[u], _mm512_loadu_si512(src + 64 * u), wb);
  }
  template <int U>
  SQFX_GEMM_TARGET static inline void finish(const Acc<U>& acc, const int32_t* zp, const float* scale,
                                             const x86::OutRow& o, bool relu, float* dst) {
    for (int u = 0; u < U; ++u)
      _mm512_storeu_ps(dst + 16 * u, x86::epilogue_m16_avx512(acc.v[u], zp + 16 * u, scale + 16 * u, o, relu));
  }
  static constexpr int64_t kTr = 16;
  SQFX_GEMM_TARGET static inline void transpose(const float* src, int64_t lds, float* dst, int64_t ldd) {
    x86::transpose16x16(src, lds, dst, ldd);
  }
};

#include "gemm_1x4_driver.h"

}  // namespace

bool gemm_1x4_64x1_avx512vnni(const PanelRows& a, int64_t chunk, const BsrWeight& w, float* out,
                              bool relu, int64_t rb_begin, int64_t rb_end) {
  return gemm_entry<MicroVnni>(a, chunk, w, out, relu, rb_begin, rb_end);
}

}  // namespace sqfx
