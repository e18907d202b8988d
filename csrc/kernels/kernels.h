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

// int32 kernels compute acc = sum_k q * w (|acc| <= K_padded * 255 * 127) and
// then acc - zp * w_sum. The op accepts any |w_sum| <= 127 * in_features (a
// tampered w_sum need not be the true row sum), so |acc - zp * w_sum| can reach
// 2 * 255 * 127 * K_padded. int32 arithmetic (exact modulo 2^32) gives that
// value exactly only while it fits int32: fast kernels may only run up to this
// many padded input features; above it the dispatcher runs the int64 generic kernel.
constexpr int64_t kMaxInt32InFeatures = 2147483647LL / (2 * 255 * 127);

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

// ---------------------------------------------------------------------------
// Fast x86 kernels (one file each, csrc/kernels/bsr_<block>_<isa>.cpp) and the
// dispatcher (dispatch.cpp) that picks among them. Every fast kernel
// accumulates in int32, exact only while the padded in_features stays at or
// below kMaxInt32InFeatures; the dispatcher checks that.

enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512Vnni = 2 };

// Activations quantized once per call into a "panel": for every group of 4
// input columns g, the 4 bytes of each row lie next to each other, rows of one
// chunk of `mc` rows consecutive: byte (m, 4g + t) sits at
//   data + chunk * groups * mc * 4 + g * mc * 4 + (m % mc) * 4 + t.
// A 1x4 weight block then multiplies mc rows with one broadcast 32-bit weight
// and unit-stride activation loads (register tiling over input rows).
struct PanelRows {
  const uint8_t* data;
  const float* scale;   // [n_chunks * mc], padded rows: scale 0
  const int32_t* zp;    // [n_chunks * mc], padded rows: 0
  int64_t M;            // real rows
  int64_t mc;           // rows per chunk, a multiple of 16
  int64_t groups;       // padded in_features / 4
};

// Vectorized twin of quantize_rows (AVX2 + FMA-free float ops, bit-identical).
// flip is XORed into every byte: 0x80 stores q - 128 as int8 (the oneDNN path).
void quantize_rows_avx2(const float* x, int64_t K, int64_t m_begin,
                        int64_t m_end, const QuantizedRows& out, uint8_t flip = 0);
// Quantizes rows [m_begin, m_end) straight into the panel layout.
void quantize_panel_avx2(const float* x, int64_t K, int64_t m_begin,
                         int64_t m_end, const PanelRows& out);

// Row blocks of 1 x cb with cb % 4 == 0 (1x4 sparse; 1xK dense layout).
// "rows" kernels: activations row-major (small M, one weight pass, gathers);
// "panel" kernels: activations in a PanelRows, one chunk of rows per call.
// All return false on a block column index out of range (never read there).
bool bsr_1x4_rows_avx2(const QuantizedRows& a, const BsrWeight& w, float* out,
                       bool relu, int64_t rb_begin, int64_t rb_end);
bool bsr_1x4_panel_avx2(const PanelRows& a, int64_t chunk, const BsrWeight& w,
                        float* out, bool relu, int64_t rb_begin, int64_t rb_end);
bool bsr_1x4_rows_avx512vnni(const QuantizedRows& a, const BsrWeight& w,
                             float* out, bool relu, int64_t rb_begin,
                             int64_t rb_end);
bool bsr_1x4_panel_avx512vnni(const PanelRows& a, int64_t chunk,
                              const BsrWeight& w, float* out, bool relu,
                              int64_t rb_begin, int64_t rb_end);
// Dense layout (every row one 1 x K_padded block at column 0, row_ptr the
// identity, checked by the dispatcher), large M: register tile over output rows too.
bool dense_panel_avx2(const PanelRows& a, int64_t chunk, const BsrWeight& w,
                      float* out, bool relu, int64_t rb_begin, int64_t rb_end);
bool dense_panel_avx512vnni(const PanelRows& a, int64_t chunk, const BsrWeight& w,
                            float* out, bool relu, int64_t rb_begin, int64_t rb_end);
// Token-batch sparse GEMM for 1x4 blocks (col_block == 4), panel activations
// (any mc, best 64), K and N cache blocking (gemm_1x4_driver.h). Register
// tile: 64 input rows x 1 output row (VNNI), 32 x 1 (AVX2, exact int16 madd).
bool gemm_1x4_64x1_avx512vnni(const PanelRows& a, int64_t chunk, const BsrWeight& w, float* out,
                              bool relu, int64_t rb_begin, int64_t rb_end);
bool gemm_1x4_32x1_avx2(const PanelRows& a, int64_t chunk, const BsrWeight& w, float* out,
                        bool relu, int64_t rb_begin, int64_t rb_end);
// Dense layout through oneDNN (aten::_int_mm, gemm_dense_s8_onednn.cpp), large M.
// Usable only where oneDNN's s8 GEMM is exact (VNNI CPU, probed once).
bool dense_onednn_usable();
// out [M, N] <- int32 C = a.q (as int8: quantized with flip 0x80, q - 128) x
// weights^T (false: a col_idx is not 0).
bool dense_onednn_gemm(const QuantizedRows& a, const BsrWeight& w, float* out);
// Converts rows [m_begin, m_end) of out from C to the final floats, in place.
void dense_onednn_epilogue_rows(const QuantizedRows& a, const BsrWeight& w, bool relu,
                                float* out, int64_t m_begin, int64_t m_end);
// Row blocks of rb x 1 with rb % 8 == 0 (8x1, 16x1, ...), any M.
bool bsr_8x1_avx2(const QuantizedRows& a, const BsrWeight& w, float* out,
                  bool relu, int64_t rb_begin, int64_t rb_end);
// (An AVX-512 VNNI 8x1 variant -- 4-block byte transpose + vpdpbusd -- measured
// 1.3-1.5x slower than this one: CPUs with VNNI run bsr_8x1_avx2.)

// Dispatcher (dispatch.cpp): quantizes x [M, K] and runs the best kernel the
// CPU (or the forced ISA) allows, multithreaded. Raises on a bad col index.
void run_qlinear(const float* x, int64_t M, const BsrWeight& w, bool relu,
                 float* out);
// Names of the ISA paths this CPU can run, best last ("generic" first).
const char* const* available_isas(int* count);
// Forces one ISA path ("auto" undoes it); returns false if not available.
bool force_isa(const char* name);
const char* active_isa_name();

}  // namespace sqfx
