// Internal interface between the op (csrc/qlinear_dynamic.cpp) and the kernels.
// Plain pointers and sizes only: the kernels know nothing of torch.
#pragma once
#include <cstdint>
#include <vector>

namespace sqfx {

// Activations quantized per row to uint8 with a zero point (see quantize_rows).
struct QuantizedRows {
  const uint8_t* q;      // [M, ld], columns >= K are padding (zero point)
  const float* scale;    // [M], NaN for a row that holds NaN/Inf
  const int32_t* zp;     // [M], in [0, 255]
  int64_t M;
  int64_t ld;            // row stride of q, >= n_col_blocks * col_block
};

// The small-M tiled layout of a 1x4 weight (bsr_1x4_tiled.cpp): tiles of
// kTiledLanes output rows (lane = row), each a run of steps; a step holds one
// block (or a zero-weight pad) per lane, all from one window of kTiledWindow
// activation dwords, so the kernels pick them by an in-register permute.
constexpr int kTiledLanes = 16;
constexpr int kTiledWindow = 32;  // dwords: two zmm (vpermi2d), four ymm (vpermd + blends)
struct TiledWeight {
  const int32_t* tile_ptr;  // [n_tiles + 1]: steps of tile t are tile_ptr[t]:tile_ptr[t+1]
  const int32_t* step_col;  // [n_steps]: window start (block column) of each step, checked by the op
                            // to lie in [0, max(0, n_col_blocks - kTiledWindow)]
  const int8_t* slot_w;     // [n_steps, 64]: the weight dword of each lane (0 for a pad)
  const uint8_t* slot_idx;  // [n_steps, 16]: each lane's dword in the window, < kTiledWindow
  const int32_t* row_perm;  // [n_tiles * 16]: output row of each lane, -1 for none
  int64_t n_tiles, n_steps;
};
// The same, owned (what build_tiled_layout writes).
struct TiledLayout {
  std::vector<int32_t> tile_ptr, step_col, row_perm;
  std::vector<int8_t> slot_w;
  std::vector<uint8_t> slot_idx;
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
  const TiledWeight* tiled = nullptr;  // the small-M layout of the same weight, when given
};

// Derives the tiled layout of a 1x4 weight (row_block 1, col_block 4) whose
// block columns are in range and increasing per row (the caller checks).
void build_tiled_layout(const BsrWeight& w, TiledLayout* out);

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
// Fast kernels, one file per kernel family and ISA (csrc/kernels/<family>_<isa>.cpp;
// setup.py compiles the files of the build machine's architecture only), and the
// kernel table (dispatch.cpp) that picks among them. Every int32 kernel is exact
// only while the padded in_features stays at or below kMaxInt32InFeatures; the
// table checks that.

// Kernel ISA paths, worst to best. A CPU (or a forced path) runs the table rows
// of its ISA and of every ISA below it.
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

// fp32 activations of the weight-only op: rows of stride ld >= n_col_blocks * cb
// (zero padded).
struct FloatRows {
  const float* x;
  int64_t M, ld;
};

// Vectorized twin of quantize_rows (AVX2, or AVX-512 when wide; bit-identical).
// flip is XORed into every byte: 0x80 stores q - 128 as int8 (the oneDNN path).
void quantize_rows_avx2(const float* x, int64_t K, int64_t m_begin,
                        int64_t m_end, const QuantizedRows& out, uint8_t flip, bool wide);
// Quantizes rows [m_begin, m_end) straight into the panel layout.
void quantize_panel_avx2(const float* x, int64_t K, int64_t m_begin,
                         int64_t m_end, const PanelRows& out, bool wide);

// The three kernel signatures. Each computes output row blocks [rb_begin,
// rb_end) and returns false if it met a block column index out of range (it
// never reads there; the op then raises).
//  rows:  quantized activations, row-major (QuantizedRows), all M rows;
//  panel: quantized activations in a PanelRows, one chunk of rows per call;
//  float: fp32 activations (the weight-only op), all M rows.
using RowsKernel = bool (*)(const QuantizedRows& a, const BsrWeight& w, float* out, bool relu,
                            int64_t rb_begin, int64_t rb_end);
using PanelKernel = bool (*)(const PanelRows& a, int64_t chunk, const BsrWeight& w, float* out,
                             bool relu, int64_t rb_begin, int64_t rb_end);
// Runs one whole dynamic call (x [M, K] -> out [M, N]); false: a bad col index.
using CallKernel = bool (*)(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out);
using FloatKernel = bool (*)(const FloatRows& a, const BsrWeight& w, float* out, bool relu,
                             int64_t rb_begin, int64_t rb_end);

// qlinear_dynamic kernels (names as in the kernel table, dispatch.cpp).
// Row blocks of 1 x cb with cb % 4 == 0 (1x4 sparse; 1xK dense layout).
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
// identity, checked by the table), large M: register tile over output rows too.
bool dense_panel_avx2(const PanelRows& a, int64_t chunk, const BsrWeight& w,
                      float* out, bool relu, int64_t rb_begin, int64_t rb_end);
bool dense_panel_avx512vnni(const PanelRows& a, int64_t chunk, const BsrWeight& w,
                            float* out, bool relu, int64_t rb_begin, int64_t rb_end);
// Dense layout, few input rows (M ~4-64): row-major activations, 4 x 4 register tile along K.
bool dense_rows_avx512vnni(const QuantizedRows& a, const BsrWeight& w, float* out, bool relu,
                           int64_t rb_begin, int64_t rb_end);
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
// c [a.M, N] (int32) = a.q (quantized with flip 0x80, read as int8: q - 128) x weight^T,
// weight [N, K_pad] with row stride ldw, through aten::_int_mm.
void dense_onednn_gemm(const QuantizedRows& a, const int8_t* weight, int64_t N, int64_t ldw, int32_t* c);
// The dense layout's col_idx are all 0 (false: a tampered one, which the GEMM would ignore).
bool dense_layout_cols_ok(const BsrWeight& w);
// sums[n] = the sum of row n's K int8 weights (row stride ldw), for n in [n_begin, n_end).
void dense_row_sums(const int8_t* weight, int64_t ldw, int64_t K, int64_t n_begin, int64_t n_end, int32_t* sums);
// Converts rows [m_begin, m_end) of out from C to the final floats, in place (AVX-512 when wide).
void dense_onednn_epilogue_rows(const QuantizedRows& a, const BsrWeight& w, bool relu,
                                float* out, int64_t m_begin, int64_t m_end, const int32_t* shift_sum,
                                bool wide);
// 1x4 weights with a tiled layout (w.tiled), small M: gather-free, lane =
// output row, window dwords picked by vpermi2d (VNNI) / vpermd + blends (AVX2).
// Here rb_begin / rb_end count tiles of kTiledLanes rows.
bool bsr_1x4_tiled_avx512vnni(const QuantizedRows& a, const BsrWeight& w, float* out, bool relu,
                              int64_t tile_begin, int64_t tile_end);
bool bsr_1x4_tiled_avx2(const QuantizedRows& a, const BsrWeight& w, float* out, bool relu,
                        int64_t tile_begin, int64_t tile_end);
// Row blocks of rb x 1 with rb % 8 == 0 (8x1, 16x1, ...), any M.
bool bsr_8x1_avx2(const QuantizedRows& a, const BsrWeight& w, float* out,
                  bool relu, int64_t rb_begin, int64_t rb_end);
// (An AVX-512 VNNI 8x1 variant -- 4-block byte transpose + vpdpbusd -- measured
// 1.3-1.5x slower than this one: CPUs with VNNI run bsr_8x1_avx2.)

// qlinear_weight_only kernels (csrc/qlinear_weight_only.cpp). w.w_sum is unused.
bool wo_generic(const FloatRows& a, const BsrWeight& w, float* out, bool relu,
                int64_t rb_begin, int64_t rb_end);
bool wo_avx2(const FloatRows& a, const BsrWeight& w, float* out, bool relu,
             int64_t rb_begin, int64_t rb_end);

// ---------------------------------------------------------------------------
// The kernel table (dispatch.cpp): rows searched in order, the first row that
// matches {op, ISA, block rule, layout, M range, K range (k_min), usable()} runs.
// A kernel may have several rows (an M range that depends on the CPU, or on
// in_features); sqfx.ops.kernel_names() lists each kernel once.
//
// To add a kernel: write it with one of the three signatures above (a new
// csrc/kernels/<family>_<isa>.cpp file is picked up by setup.py's source rules),
// declare it here, and add one row to kTable in dispatch.cpp above the rows it
// should win over. Name it <datatypes>_<layout>_<tile>__<isa> (XNNPACK style):
// "qd8" = the dynamic op (u8 activations quantized per row, s8 weights, f32 out),
// "f32_qc8w" = the weight-only op (f32 activations, per-channel s8 weights).
// A new ISA (e.g. ARM NEON / dotprod) is one more Isa value, one capability
// check in dispatch.cpp and its rows.

enum class Op : int { kDynamic = 0, kWeightOnly = 1 };
enum class BlockRule : int {
  k1x4,   // exactly 1x4
  k1x4c,  // row_block 1, col_block % 4 == 0 (1x4, 1x8, ..., the dense 1 x K_pad)
  k8x1,   // col_block 1, row_block % 8 == 0 (8x1, 16x1, ...)
  kAny,
};
enum class Layout : int {
  kSparse,  // any BSR weight that is not the dense layout
  kDense,   // pack(layout="dense"): one 1 x K_pad block per row, row_ptr the identity
  kTiled,   // the call carries the small-M tiled layout (w.tiled) of a 1x4 weight
  kMostlyDense,   // at least kDenseMinPercent of the blocks stored (the dense layout too)
  kMostlySparse,  // fewer
  kSparseDensifiable,  // sparse (not the dense layout) with at least kDensifyMinPercent of the blocks
  kFull,          // every block slot stored (0% sparse; the dense layout too)
  kAny,
};
// Where, at large M on a CPU whose oneDNN int8 GEMM uses AMX tiles, scattering a sparse 1x4
// weight into a dense scratch and running that GEMM beats the VNNI sparse GEMM: at least
// kDensifyMinPercent of the blocks stored and padded in_features >= kDensifyMinInFeatures
// (measured on an AMX Xeon, best of 9-21 interleaved rounds, 80% sparse, M = 1024-4096:
// 1.2-1.4x at K = 3072, 1.0-1.7x at 4096; 0.7-0.95x at K <= 768, where oneDNN's GEMM is
// less efficient; at 90% the sparse GEMM won or tied).
// Stored fraction of the blocks from which the weight-only dense tiles (dense FMA
// count, best register reuse) beat the sparse ones (FMAs only for stored blocks).
constexpr int64_t kDenseMinPercent = 40;
// 17%, not lower: the dense scratch (4 bytes per block slot) then stays under 4x the bytes of the
// blocks it expands (4 of values + 2 of int16 col_idx each), so a crafted file cannot make the
// op allocate more than 4x its size (docs/design.md, threat model).
constexpr int64_t kDensifyMinPercent = 17;
constexpr int64_t kDensifyMinInFeatures = 2048;

struct KernelEntry {
  const char* name;
  Op op;
  Isa isa;          // the least ISA it needs
  BlockRule block;
  Layout layout;
  int64_t m_min, m_max;  // input rows (flattened M), inclusive
  bool int32_acc;        // exact only for K_pad <= kMaxInt32InFeatures
  RowsKernel rows;       // exactly one of rows / panel / fp / call is set
  PanelKernel panel;
  FloatKernel fp;
  int64_t chunk_rows;    // panel kernels: rows per panel chunk (0: sized to stay in L2)
  bool (*usable)();      // optional run-time condition (a probe, an env switch)
  CallKernel call;       // runs the whole call itself (its own quantizer and scratch)
  int64_t k_min;         // least padded in_features (0: any)
};

// Weight-only drivers (wo_drivers_x86.cpp): the `call` of the f32_qc8w_* tiled rows.
bool wo_call_rowdot_6x4_avx512(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out);
bool wo_call_rowdot_3x4_avx2(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out);
bool wo_call_dense_12x32_avx512(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out);
bool wo_call_dense_6x16_avx2(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out);
bool wo_call_bsr_m64_avx512(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out);
bool wo_call_bsr_m32_avx2(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out);

// The row of the table that serves this call (never null: the generic kernels
// match everything).
const KernelEntry& select_kernel(Op op, Isa isa, const BsrWeight& w, int64_t M);
// The table itself, for listing (count rows).
const KernelEntry* kernel_table(int* count);

// Dispatcher (dispatch.cpp): quantizes x [M, K] and runs the table's kernel for
// the CPU (or the forced ISA), multithreaded. Raises on a bad col index.
void run_qlinear(const float* x, int64_t M, const BsrWeight& w, bool relu,
                 float* out);
// Names of the ISA paths this CPU can run, best last ("generic" first).
const char* const* available_isas(int* count);
// Forces one ISA path ("auto" undoes it); returns false if not available.
bool force_isa(const char* name);
const char* active_isa_name();
// The ISA the kernels run now: the best the CPU has, or the forced one.
Isa current_isa();

}  // namespace sqfx
