// The avx2 vector type of the weight-only fp32 kernels (wo_f32_tiles.h).
#pragma once
#define SQFX_WO_TARGET __attribute__((target("avx2,fma")))
#include "wo_f32_tiles.h"

namespace sqfx {
namespace {
struct V256 {
  using Reg = __m256;
  static constexpr int kWidth = 8;
  SQFX_WO_TARGET static Reg zero() { return _mm256_setzero_ps(); }
  SQFX_WO_TARGET static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  SQFX_WO_TARGET static void store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  SQFX_WO_TARGET static Reg broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  SQFX_WO_TARGET static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  SQFX_WO_TARGET static float hsum(Reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  SQFX_WO_TARGET static Reg load_i8(const int8_t* p) {
    int64_t bits;
    std::memcpy(&bits, p, 8);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(bits)));
  }
};
}  // namespace
}  // namespace sqfx
