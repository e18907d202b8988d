// AVX2 + FMA weight-only dense kernel (wo_kernels.h): 6 input rows x 16 output rows, 12 of the 16 ymm registers as accumulators.
#include "wo_f32_vec_avx2.h"

namespace sqfx {

bool wo_f32_dense_6x16_avx2(const WoRows& a, const BsrWeight& w, bool relu, float* out,
                            int64_t panel_begin, int64_t panel_end, float* panel) {
  return dense_entry<V256, 6, kWoDenseNr256>(a, w, relu, out, panel_begin, panel_end, panel);
}

}  // namespace sqfx
