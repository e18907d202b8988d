// Internal interface of the sqfx::qlinear_weight_only kernels (csrc/qlinear_weight_only.cpp
// picks one per call). fp32 activations x int8 BSR weights (BsrWeight of kernels.h, w_sum
// unused), fp32 sums, y = sum * w_scale[n] + bias[n] (+ ReLU). Plain pointers only.
//
// Names: wo_<datatype>_<tile>_<isa>. The dequantization of the int8 weights is amortized over
// a tile of input rows in both families:
//  * dense_MRxNR: a panel of NR output rows is dequantized once to fp32 ([ld][NR], pruned
//    blocks zero) and an MR x NR register tile of fp32 FMAs runs over it for every MR input
//    rows. Dense-GEMM cost, any sparsity: for low sparsity.
//  * bsr_mMT: activations transposed into chunks of MT rows ([ld][MT]); each stored weight is
//    broadcast once and multiplies MT rows (unit-stride loads). Cost proportional to the
//    stored blocks: for high sparsity. Any block shape.
// All return false, before reading there, on a block column index out of range.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace sqfx {

// Activation rows x[m * stride + k], k < K (no padding needed).
struct WoRows {
  const float* x;
  int64_t M, stride, K;
};

// Output rows [panel_begin * NR, panel_end * NR) of out [M, N]; panel: scratch of
// wo_dense_scratch_floats(ld, NR) floats (ld = n_col_blocks * col_block): the fp32 panel, then
// the int8 rows it is dequantized from.
constexpr int64_t wo_dense_scratch_floats(int64_t ld, int64_t nr) { return ld * nr + ((nr + 1) * ld + 3) / 4; }
bool wo_f32_dense_12x32_avx512(const WoRows& a, const BsrWeight& w, bool relu, float* out,
                               int64_t panel_begin, int64_t panel_end, float* panel);
bool wo_f32_dense_6x16_avx2(const WoRows& a, const BsrWeight& w, bool relu, float* out,
                            int64_t panel_begin, int64_t panel_end, float* panel);
constexpr int64_t kWoDenseNr512 = 32, kWoDenseNr256 = 16;

// rowdot_MRx4: few input rows at low sparsity. Groups of 4 output rows [4 g_begin, 4 g_end):
// their int8 weights (as stored, or copied into `rows`, 4 * a.stride bytes, zero where pruned)
// are widened to fp32 in registers, one vector for MR input rows, dot products along k.
// a.stride = kpad: ld rounded up to kWoRowdotAlign, x rows readable (zero) up to it.
bool wo_f32_rowdot_6x4_avx512(const WoRows& a, const BsrWeight& w, bool relu, float* out,
                              int64_t g_begin, int64_t g_end, int8_t* rows);
bool wo_f32_rowdot_3x4_avx2(const WoRows& a, const BsrWeight& w, bool relu, float* out,
                            int64_t g_begin, int64_t g_end, int8_t* rows);
constexpr int64_t kWoRowdotAlign = 16;

// xT: one chunk of MT input rows transposed, [ld][MT] with ld = n_col_blocks * col_block
// (entries past K or past `rows` zero); writes output
// rows m0 .. m0 + rows - 1 of the row blocks [rb_begin, rb_end). wbuf: scratch of
// max_blocks_per_row_block * row_block * col_block floats.
bool wo_f32_bsr_m64_avx512(const float* xT, int64_t m0, int64_t rows, const BsrWeight& w, bool relu,
                           float* out, int64_t rb_begin, int64_t rb_end, float* wbuf);
bool wo_f32_bsr_m32_avx2(const float* xT, int64_t m0, int64_t rows, const BsrWeight& w, bool relu,
                         float* out, int64_t rb_begin, int64_t rb_end, float* wbuf);
constexpr int64_t kWoBsrMt512 = 64, kWoBsrMt256 = 32;

}  // namespace sqfx
