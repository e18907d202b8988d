// AVX2 + FMA weight-only kernel for few rows (wo_kernels.h): 3 input rows x 4 weight rows, 12 ymm accumulators.
#include "wo_f32_vec_avx2.h"

namespace sqfx {

bool wo_f32_rowdot_3x4_avx2(const WoRows& a, const BsrWeight& w, bool relu, float* out,
                            int64_t g_begin, int64_t g_end, int8_t* rows) {
  return rowdot_entry<V256, 3>(a, w, relu, out, g_begin, g_end, rows);
}

}  // namespace sqfx
