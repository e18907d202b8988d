// The avx512 vector type of the weight-only fp32 kernels (wo_f32_tiles.h).
#pragma once
#define SQFX_WO_TARGET __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl")))
#include "wo_f32_tiles.h"

namespace sqfx {
namespace {
struct V512 {
  using Reg = __m512;
  static constexpr int kWidth = 16;
  SQFX_WO_TARGET static Reg zero() { return _mm512_setzero_ps(); }
  SQFX_WO_TARGET static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  SQFX_WO_TARGET static void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  SQFX_WO_TARGET static Reg broadcast(const float* p) { return _mm512_set1_ps(*p); }
  SQFX_WO_TARGET static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  SQFX_WO_TARGET static float hsum(Reg v) { return _mm512_reduce_add_ps(v); }
  SQFX_WO_TARGET static Reg load_i8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
};
}  // namespace
}  // namespace sqfx
