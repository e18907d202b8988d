// The int16 activations of the AVX2 panel kernels (dense_avx2.cpp,
// bsr_1x4_avx2.cpp, gemm_1x4_32x1_avx2.cpp). Their exact product, vpmaddwd,
// takes int16, so each chunk of the u8 panel (PanelRows) is zero-extended once
// per call instead of once per block (or weight row) and 8 rows: that costs
// 1 / (N x density) of the kernel's multiply-adds (on AMD Zen1 the per-block
// vpmovzxbw were ~46% of the token-batch GEMM's samples).
#pragma once
#include <immintrin.h>

#include <vector>

#include "kernels.h"

namespace sqfx {
namespace x86 {

// Chunk `chunk` of a's panel as int16, same layout (groups x mc rows x 4), in a
// per-thread buffer that stays valid until this thread's next call.
__attribute__((target("avx2,fma"))) inline const int16_t* widened_chunk(const PanelRows& a, int64_t chunk) {
  thread_local std::vector<int16_t> wide;
  const int64_t n = a.groups * a.mc * 4;  // mc is a multiple of 16
  if (static_cast<int64_t>(wide.size()) < n) wide.resize(n);
  const uint8_t* src = a.data + chunk * n;
  for (int64_t i = 0; i < n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(wide.data() + i),
                        _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  return wide.data();
}

}  // namespace x86
}  // namespace sqfx
