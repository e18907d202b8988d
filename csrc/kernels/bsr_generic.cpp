// Portable block-sparse kernel for any row_block x col_block. Exact integer
// accumulation of uint8 x int8 products (int64,
// so no in_features can overflow; no 16-bit intermediates), then the
// shared epilogue. The fast ISA-specific kernels must match it bit for bit.
#include "kernels.h"

#include <vector>

namespace sqfx {

template <typename Index>
static bool bsr_generic_impl(const QuantizedRows& a, const BsrWeight& w,
                             const Index* col_idx, float* out, bool relu,
                             int64_t rb_begin, int64_t rb_end) {
  const int64_t rb = w.row_block, cb = w.col_block, block = rb * cb;
  std::vector<int64_t> acc(rb);
  bool ok = true;
  for (int64_t m = 0; m < a.M; ++m) {
    const uint8_t* q = a.q + m * a.ld;
    const float a_scale = a.scale[m];
    const int32_t zp = a.zp[m];
    float* y = out + m * w.N;
    for (int64_t i = rb_begin; i < rb_end; ++i) {
      std::fill(acc.begin(), acc.end(), 0);
      for (int64_t j = w.row_ptr[i]; j < w.row_ptr[i + 1]; ++j) {
        const int64_t col = static_cast<int64_t>(col_idx[j]);
        if (col < 0 || col >= w.n_col_blocks) {
          ok = false;
          continue;
        }
        const uint8_t* qa = q + col * cb;
        const int8_t* v = w.values + j * block;
        for (int64_t r = 0; r < rb; ++r) {
          int64_t s = 0;
          for (int64_t c = 0; c < cb; ++c) {
            s += static_cast<int32_t>(qa[c]) * static_cast<int32_t>(v[r * cb + c]);
          }
          acc[r] += s;
        }
      }
      for (int64_t r = 0; r < rb; ++r) {
        const int64_t n = i * rb + r;
        if (n >= w.N) break;
        y[n] = epilogue(acc[r], zp, w.w_sum[n], a_scale, w.w_scale[n], w.bias,
                        n, relu);
      }
    }
  }
  return ok;
}

bool bsr_generic(const QuantizedRows& a, const BsrWeight& w, float* out,
                 bool relu, int64_t rb_begin, int64_t rb_end) {
  if (w.col_idx_16) {
    return bsr_generic_impl(a, w, static_cast<const int16_t*>(w.col_idx), out,
                            relu, rb_begin, rb_end);
  }
  return bsr_generic_impl(a, w, static_cast<const int32_t*>(w.col_idx), out,
                          relu, rb_begin, rb_end);
}

}  // namespace sqfx
