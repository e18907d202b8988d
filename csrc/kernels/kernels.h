// Internal interface between the op (csrc/qlinear_dynamic.cpp) and the kernels.
// Plain pointers and sizes only: the kernels know nothing of torch.
#pragma once
#include <cstdint>

namespace sqfx {

// Activations quantized per row to uint8 with a zero point (see quantize_rows).
struct QuantizedRows {
  const uint8_t* q;      // [M, ld], columns >= K are padding (zero point)
  const float* scale;    // [M], NaN for a row that holds NaN/Inf
  const int32_t* zp;     // [M], in [0, 255]
  int64_t M;
  int64_t ld;            // row stride of q, >= n_col_blocks * col_block
};

// A block-sparse row (BSR) int8 weight, already validated by the op.
struct BsrWeight {
  const int8_t* values;    // [nnz, row_block, col_block]
  const int32_t* row_ptr;  // [n_row_blocks + 1]
  const void* col_idx;     // [nnz], int16 or int32 block-column indices
  bool col_idx_16;
  const float* w_scale;    // [N]
  const int32_t* w_sum;    // [N], sum_k of the int8 weights of row n
  const float* bias;       // [N] or nullptr
  int64_t N, K;
  int64_t row_block, col_block;
  int64_t n_row_blocks, n_col_blocks;
  int64_t nnz;
};

// Quantizes rows [m_begin, m_end) of x [M, K] (contiguous fp32) into out.
void quantize_rows(const float* x, int64_t K, int64_t m_begin, int64_t m_end,
                   const QuantizedRows& out);

// Portable kernel, any block shape, int64 accumulators (any in_features). Computes output rows [0, M) for the
// row blocks [rb_begin, rb_end). Returns false if it met a block column
// index out of range (the output is then garbage and the op raises).
bool bsr_generic(const QuantizedRows& a, const BsrWeight& w, float* out,
                 bool relu, int64_t rb_begin, int64_t rb_end);

// |sum_k (q - zp) * w| <= K_padded * 255 * 127: int32 accumulators are exact
// up to this many (padded) input features. Kernels that accumulate in int32
// may only run below it; the generic kernel accumulates in int64.
constexpr int64_t kMaxInt32InFeatures = 2147483647LL / (255 * 127);

// Shared epilogue: y = float(acc - zp * w_sum) * (a_scale * w_scale) + bias.
// acc is the exact integer accumulator; float() rounds to nearest.
inline float epilogue(int64_t acc, int32_t zp, int32_t w_sum, float a_scale,
                      float w_scale, const float* bias, int64_t n, bool relu) {
  int64_t corrected = acc - static_cast<int64_t>(zp) * w_sum;
  float y = static_cast<float>(corrected) * (a_scale * w_scale);
  if (bias) y = y + bias[n];
  if (relu) y = (y < 0.0f) ? 0.0f : y;  // keeps NaN, as torch.relu does
  return y;
}

}  // namespace sqfx
