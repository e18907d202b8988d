// AVX-512F weight-only sparse kernel (wo_kernels.h): one output row x 64 input rows, 4 zmm accumulators.
#include "wo_f32_vec_avx512.h"

namespace sqfx {

bool wo_f32_bsr_m64_avx512(const float* xT, int64_t m0, int64_t rows, const BsrWeight& w, bool relu,
                           float* out, int64_t rb_begin, int64_t rb_end, float* wbuf) {
  return bsr_entry<V512, kWoBsrMt512>(xT, m0, rows, w, relu, out, rb_begin, rb_end, wbuf);
}

}  // namespace sqfx
