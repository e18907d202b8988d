// AVX-512F weight-only dense kernel (wo_kernels.h): 12 input rows x 32 output rows, 24 zmm accumulators.
#include "wo_f32_vec_avx512.h"

namespace sqfx {

bool wo_f32_dense_12x32_avx512(const WoRows& a, const BsrWeight& w, bool relu, float* out,
                               int64_t panel_begin, int64_t panel_end, float* panel) {
  return dense_entry<V512, 12, kWoDenseNr512>(a, w, relu, out, panel_begin, panel_end, panel);
}

}  // namespace sqfx
