// AVX-512F weight-only kernel for few rows (wo_kernels.h): 6 input rows x 4 weight rows, 24 zmm accumulators.
#include "wo_f32_vec_avx512.h"

namespace sqfx {

bool wo_f32_rowdot_6x4_avx512(const WoRows& a, const BsrWeight& w, bool relu, float* out,
                              int64_t g_begin, int64_t g_end, int8_t* rows) {
  return rowdot_entry<V512, 6>(a, w, relu, out, g_begin, g_end, rows);
}

}  // namespace sqfx
