// The kernel table of both ops, and the driver of one sqfx::qlinear_dynamic call.
//
// kTable (below) maps {op, ISA, block rule, layout, M range, K range} to a
// named kernel; select_kernel() returns its first matching row. Both ops ask it
// (qlinear_dynamic here, qlinear_weight_only in csrc/qlinear_weight_only.cpp),
// Python asks it through sqfx::_kernel_for (PackedLinear.kernel), and
// force_isa() limits it to the rows of one ISA and below, so forcing reaches
// every kernel. How to add a kernel: kernels.h, "The kernel table".
//
// Rules encoded by the rows (docs/design.md, "Kernels and layout"):
//  * ISA: the best the CPU has (avx512vnni > avx2 > generic), checked once,
//    unless a test forced one (force_isa).
//  * padded in_features > kMaxInt32InFeatures: only rows with int64 (or fp32)
//    accumulators, i.e. the portable kernel.
//  * 1 x cb blocks, cb % 4 == 0 (1x4 sparse, and the dense layout 1 x K_pad):
//    M < kPanelMinRows: "rows" kernel on row-major activations; else
//    activations are quantized straight into a panel (PanelRows) and the
//    "panel" kernel register-tiles over input rows; the dense layout's panel
//    kernels register-tile over output rows as well. 1x4 blocks at M >=
//    kGemmMinRows run the token-batch GEMM (gemm_1x4_*: chunks of 64 rows, K
//    and N cache blocking). Not forced (force_isa "auto") and M >=
//    kOnednnMinRows, the dense layout runs oneDNN's int8 GEMM (aten::_int_mm)
//    where it is exact (VNNI CPUs, probed once).
//  * rb x 1 blocks, rb % 8 == 0: the AVX2 8x1 kernel (on VNNI CPUs too).
//  * anything else: the portable kernel (activations still quantized by AVX2).
// Threads: over output row blocks (and chunks of input rows for the panel
// kernels) with torch::stable::parallel_for, only when the call holds at least
// kMinParallelWork multiply-adds, so small layers pay no thread hand-off.
// Scratch buffers are thread_local and only grow up to 16 MB (no allocation per
// call); a call that needed more releases them at its end.
#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>

#include "../check.h"
#include "kernels.h"
#include "parallel.h"
#include "wo_kernels.h"

namespace sqfx {
// The first row from `from` on that serves the call (select_kernel: from the top).
const KernelEntry& select_from(const KernelEntry* from, Op op, Isa isa, const BsrWeight& w, int64_t M);

namespace {

constexpr int64_t kPanelMinRows = 4;
// The small-M tiled kernels run up to these M (when the call carries the layout);
// above them the panel kernels' cost per extra input row is lower (measured
// crossovers, 4096x4096 and BERT shapes at 80-90%, tools/kernel_timing.py --small-m:
// at M = 12 the VNNI tiled kernel is 0.91-1.32x the panel one, at M = 8 1.05-1.81x).
constexpr int64_t kTiledMaxRowsVnni = 8;
constexpr int64_t kTiledMaxRowsAvx2 = 3;
// Weight-only: mostly dense layers run the fp32 panel kernel from these M on (AVX-512: up to
// kWoRowdotMaxRowsLongK where padded in_features >= kWoRowdotLongK, rowdot below that);
// mostly sparse ones the transposed-activation tiles from kWoTileMinRows on.
constexpr int64_t kWoPanelMinRowsVnni = 24, kWoPanelMinRowsAvx2 = 8, kWoTileMinRows = 16;
constexpr int64_t kWoRowdotMaxRowsLongK = 255, kWoRowdotLongK = 2048;
constexpr int64_t kPanelBytes = 256 * 1024;  // a chunk of activations stays in L2
// Dense layout from this many rows on: oneDNN through aten::_int_mm (unless an
// ISA is forced: force_isa selects our own kernels of that ISA).
constexpr int64_t kOnednnMinRows = 16;
// The VNNI dense row tile up to these M on CPUs without AMX (above them oneDNN's GEMM), and
// up to kDenseRowsMaxRowsLongK where padded in_features >= kDenseRowsLongK (its one reduction
// per output then costs less against the K loop).
constexpr int64_t kDenseRowsMaxRows = 32, kDenseRowsMaxRowsLongK = 128, kDenseRowsLongK = 2048;
// 1x4 blocks from this many rows on: the token-batch GEMM (gemm_1x4_*), chunks
// of kGemmChunkRows rows (its register tile is 64 rows; K tiles keep the
// chunk's panel slice in L1, so the chunk need not fit in L2).
constexpr int64_t kGemmMinRows = 32;
constexpr int64_t kGemmChunkRows = 64;

// Sparse 1x4 weights with at least kDensifyMinPercent of their blocks, from this many rows
// on, on CPUs whose oneDNN int8 GEMM runs on AMX tiles: scattered into a dense scratch for
// that GEMM (the scatter costs N x K bytes, under 4% of the GEMM from here on).
constexpr int64_t kDensifyMinRows = 1024;

// SQFX_BASELINE_PANEL=1 (read once) keeps the first-version panel kernels for
// 1x4 at every M: the baseline the benchmarks compare the GEMM with.
bool gemm_1x4_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("SQFX_BASELINE_PANEL");
    return v == nullptr || std::strcmp(v, "1") != 0;
  }();
  return enabled;
}

struct Caps {
  bool avx2 = false, vnni = false, amx_int8 = false;
};

const Caps& caps() {
  static const Caps c = [] {
    Caps r;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    r.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    r.vnni = r.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    r.amx_int8 = __builtin_cpu_supports("amx-int8");
#endif
    return r;
  }();
  return c;
}

bool no_amx() { return !caps().amx_int8; }

const char* const kIsaNames[] = {"generic", "avx2", "avx512vnni"};

Isa best_isa() {
  return caps().vnni ? Isa::kAvx512Vnni : caps().avx2 ? Isa::kAvx2 : Isa::kGeneric;
}

// The oneDNN row: only when no ISA is forced (force_isa selects our own kernels
// of that ISA) and where oneDNN's s8 GEMM is exact.
#if defined(__x86_64__) || defined(_M_X64)
bool onednn_unforced();
bool run_dense_onednn(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out);
bool densify_enabled();
bool run_densified_onednn(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out);
#endif
void run_entry(const KernelEntry& kernel, const float* x, int64_t M, const BsrWeight& w, bool relu, float* out);

constexpr int64_t kNoLimit = INT64_MAX;
constexpr Op D = Op::kDynamic, W = Op::kWeightOnly;

// Searched top to bottom; the first row that matches runs. Keep the fastest
// kernel of a case above the more general rows; the generic rows last.
const KernelEntry kTable[] = {
#if defined(__x86_64__) || defined(_M_X64)
    // name                                op ISA              block               layout            M range                  int32  rows / panel / fp
    {"qd8_bsr1x4_tiled16x32__avx512vnni",  D, Isa::kAvx512Vnni, BlockRule::k1x4,  Layout::kTiled,  1, kTiledMaxRowsVnni,       true, bsr_1x4_tiled_avx512vnni, nullptr, nullptr},
    {"qd8_bsr1x4c_rows__avx512vnni",       D, Isa::kAvx512Vnni, BlockRule::k1x4c, Layout::kAny,    1, kPanelMinRows - 1,       true, bsr_1x4_rows_avx512vnni, nullptr, nullptr},
    // Dense layout, few rows: the 4 x 4 row tile along K (weights read once, every lane a product).
    // Measured on Zen 4, 2 threads, 0% dense: 1.3-4x the 16-row panel kernel at M = 4-15 on every
    // MiniLM / BERT shape and 4096x4096; against oneDNN's GEMM 1.0-4.8x at M = 16-32 (1536x384
    // M = 32 0.95x) and, at K_pad >= 2048, 1.1-1.8x up to M = 128. On AMX CPUs oneDNN keeps M >= 16.
    {"qd8_dense_rows4x4__avx512vnni",      D, Isa::kAvx512Vnni, BlockRule::k1x4c, Layout::kDense,  kPanelMinRows, kOnednnMinRows - 1, true, dense_rows_avx512vnni, nullptr, nullptr},
    {"qd8_dense_rows4x4__avx512vnni",      D, Isa::kAvx512Vnni, BlockRule::k1x4c, Layout::kDense,  kOnednnMinRows, kDenseRowsMaxRows, true, dense_rows_avx512vnni, nullptr, nullptr, 0, no_amx},
    {"qd8_dense_rows4x4__avx512vnni",      D, Isa::kAvx512Vnni, BlockRule::k1x4c, Layout::kDense,  kDenseRowsMaxRows + 1, kDenseRowsMaxRowsLongK, true, dense_rows_avx512vnni, nullptr, nullptr, 0, no_amx, nullptr, kDenseRowsLongK},
    {"qd8_dense_onednn__avx512vnni",       D, Isa::kAvx512Vnni, BlockRule::k1x4c, Layout::kDense,  kOnednnMinRows, kNoLimit,   true, nullptr, nullptr, nullptr, 0, onednn_unforced, run_dense_onednn},
    {"qd8_dense_panel4x64__avx512vnni",    D, Isa::kAvx512Vnni, BlockRule::k1x4c, Layout::kDense,  kPanelMinRows, kNoLimit,    true, nullptr, dense_panel_avx512vnni, nullptr},
    {"qd8_bsr1x4_densify_onednn__avx512vnni", D, Isa::kAvx512Vnni, BlockRule::k1x4, Layout::kSparseDensifiable, kDensifyMinRows, kNoLimit, true, nullptr, nullptr, nullptr, 0, densify_enabled, run_densified_onednn},
    {"qd8_bsr1x4_gemm64x1__avx512vnni",    D, Isa::kAvx512Vnni, BlockRule::k1x4,  Layout::kSparse, kGemmMinRows, kNoLimit,     true, nullptr, gemm_1x4_64x1_avx512vnni, nullptr, kGemmChunkRows, gemm_1x4_enabled},
    {"qd8_bsr1x4c_panel16__avx512vnni",    D, Isa::kAvx512Vnni, BlockRule::k1x4c, Layout::kAny,    kPanelMinRows, kNoLimit,    true, nullptr, bsr_1x4_panel_avx512vnni, nullptr},
    {"qd8_bsr1x4_tiled16x32__avx2",        D, Isa::kAvx2,       BlockRule::k1x4,  Layout::kTiled,  1, kTiledMaxRowsAvx2,       true, bsr_1x4_tiled_avx2, nullptr, nullptr},
    {"qd8_bsr1x4c_rows__avx2",             D, Isa::kAvx2,       BlockRule::k1x4c, Layout::kAny,    1, kPanelMinRows - 1,       true, bsr_1x4_rows_avx2, nullptr, nullptr},
    {"qd8_dense_panel2x16__avx2",          D, Isa::kAvx2,       BlockRule::k1x4c, Layout::kDense,  kPanelMinRows, kNoLimit,    true, nullptr, dense_panel_avx2, nullptr},
    {"qd8_bsr1x4_gemm32x1__avx2",          D, Isa::kAvx2,       BlockRule::k1x4,  Layout::kSparse, kGemmMinRows, kNoLimit,     true, nullptr, gemm_1x4_32x1_avx2, nullptr, kGemmChunkRows, gemm_1x4_enabled},
    {"qd8_bsr1x4c_panel8__avx2",           D, Isa::kAvx2,       BlockRule::k1x4c, Layout::kAny,    kPanelMinRows, kNoLimit,    true, nullptr, bsr_1x4_panel_avx2, nullptr},
    {"qd8_bsr8x1_rows8__avx2",             D, Isa::kAvx2,       BlockRule::k8x1,  Layout::kAny,    1, kNoLimit,                true, bsr_8x1_avx2, nullptr, nullptr},
    // Weight-only: AVX-512 rows need only AVX-512F/BW/VL, which every avx512vnni CPU has.
    // Mostly dense: rowdot (int8 widened in registers) below, the fp32 panel from the
    // measured crossover up (AVX2, Zen1, MiniLM shapes and 3072x768 at 0%, since the panel's
    // dequantization is vectorized: the panel ahead from M = 8. AVX-512, Zen 4, 2 threads, 0%:
    // rowdot ahead at M = 4-8 (1.1-2.4x), tied at 16, the panel ahead from 32 at K <= 1536
    // (1.0-1.4x, 768x768 M=128 0.85x -> 1.14x fp32) and 3072x768 M=128 (1.4x); rowdot still ahead
    // at K = 3072-4096 (768x3072 M=128 1.24x, 4096x4096 M=32 1.5x), hence the K rule.)
    // AVX2 below M = 8: rowdot only where every block is stored (it copies each partly stored
    // row into an int8 row per call: at 50% 1.1-2.7x slower than the per-row kernel,
    // f32_qc8w_bsr__avx2), and for 1x4 blocks not at M = 1, where the per-row kernel wins at 0%
    // too (384x384 34.4 us against 42.5, 3072x768 314 against 388: rowdot checks every block's
    // column per call). 1x8 and the dense layout keep rowdot at M = 1 (3072x768: 318 / 237 us
    // against 498 / 332). Mostly sparse: the per-row kernel below 16 rows, then the
    // transposed-activation tiles; AVX-512 CPUs run the 32-row AVX2 tile up to M = 32 (a
    // half-empty 64-row tile was slower: 768x3072 80%, 0.87 ms against 0.65 ms at M = 16-32).
    {"f32_qc8w_rowdot6x4__avx512vnni",     W, Isa::kAvx512Vnni, BlockRule::kAny,  Layout::kMostlyDense,  1, kWoPanelMinRowsVnni - 1, false, nullptr, nullptr, nullptr, 0, nullptr, wo_call_rowdot_6x4_avx512},
    {"f32_qc8w_rowdot6x4__avx512vnni",     W, Isa::kAvx512Vnni, BlockRule::kAny,  Layout::kMostlyDense,  kWoPanelMinRowsVnni, kWoRowdotMaxRowsLongK, false, nullptr, nullptr, nullptr, 0, nullptr, wo_call_rowdot_6x4_avx512, kWoRowdotLongK},
    {"f32_qc8w_dense12x32__avx512vnni",    W, Isa::kAvx512Vnni, BlockRule::kAny,  Layout::kMostlyDense,  kWoPanelMinRowsVnni, kNoLimit, false, nullptr, nullptr, nullptr, 0, nullptr, wo_call_dense_12x32_avx512},
    {"f32_qc8w_bsr_m64__avx512vnni",       W, Isa::kAvx512Vnni, BlockRule::kAny,  Layout::kMostlySparse, kWoBsrMt256 + 1, kNoLimit, false, nullptr, nullptr, nullptr, 0, nullptr, wo_call_bsr_m64_avx512},
    {"f32_qc8w_bsr1x4_rows4__avx2",        W, Isa::kAvx2,       BlockRule::k1x4,  Layout::kAny,          1, 1,                     false, nullptr, nullptr, wo_avx2},
    {"f32_qc8w_rowdot3x4__avx2",           W, Isa::kAvx2,       BlockRule::kAny,  Layout::kFull,         1, kWoPanelMinRowsAvx2 - 1, false, nullptr, nullptr, nullptr, 0, nullptr, wo_call_rowdot_3x4_avx2},
    {"f32_qc8w_dense6x16__avx2",           W, Isa::kAvx2,       BlockRule::kAny,  Layout::kMostlyDense,  kWoPanelMinRowsAvx2, kNoLimit, false, nullptr, nullptr, nullptr, 0, nullptr, wo_call_dense_6x16_avx2},
    {"f32_qc8w_bsr_m32__avx2",             W, Isa::kAvx2,       BlockRule::kAny,  Layout::kMostlySparse, kWoTileMinRows, kNoLimit, false, nullptr, nullptr, nullptr, 0, nullptr, wo_call_bsr_m32_avx2},
    {"f32_qc8w_bsr__avx2",                 W, Isa::kAvx2,       BlockRule::kAny,  Layout::kAny,    1, kNoLimit,                false, nullptr, nullptr, wo_avx2},
#endif
    {"qd8_bsr__scalar",                    D, Isa::kGeneric,    BlockRule::kAny,  Layout::kAny,    1, kNoLimit,                false, bsr_generic, nullptr, nullptr},
    {"f32_qc8w_bsr__scalar",               W, Isa::kGeneric,    BlockRule::kAny,  Layout::kAny,    1, kNoLimit,                false, nullptr, nullptr, wo_generic},
};

bool block_matches(BlockRule rule, const BsrWeight& w) {
  switch (rule) {
    case BlockRule::k1x4: return w.row_block == 1 && w.col_block == 4;
    case BlockRule::k1x4c: return w.row_block == 1 && w.col_block % 4 == 0;
    case BlockRule::k8x1: return w.col_block == 1 && w.row_block % 8 == 0;
    case BlockRule::kAny: return true;
  }
  return false;
}

// pack(layout="dense"): one 1 x K_padded block per row. The dense kernels
// ignore row_ptr / col_idx, so the row pointers must be exactly the identity
// (O(rows) check; the kernels check that each col_idx is 0).
bool is_dense_layout(const BsrWeight& w) {
  if (w.row_block != 1 || w.n_col_blocks != 1 || w.nnz != w.N) return false;
  for (int64_t i = 0; i <= w.N; ++i)
    if (w.row_ptr[i] != i) return false;
  return true;
}

std::atomic<int> g_forced{-1};


struct Scratch {
  std::vector<uint8_t> q;
  std::vector<float> scale;
  std::vector<int32_t> zp;
  std::vector<int8_t> dense;     // run_densified_onednn: the weight scattered to [N, K_pad]
  std::vector<int32_t> row_sum;  // and its true row sums
};
thread_local Scratch tls;

// Scratch is M x padded in_features bytes, and a crafted layer (one wide block
// backed by its values) can make that far larger than anything it keeps. Past
// this size the buffers are released when the call ends (also when it raises),
// so no thread holds a huge buffer for the rest of the process; calls below it
// keep theirs (no allocation per call).
constexpr size_t kKeepScratchBytes = size_t{16} << 20;
struct ReleaseLargeScratch {
  ~ReleaseLargeScratch() {
    // (the densified weight is kept up to 4x more: re-faulting it in costs ~10% of its GEMM)
    if (tls.q.capacity() + 8 * tls.scale.capacity() > kKeepScratchBytes ||
        tls.dense.capacity() > 4 * kKeepScratchBytes)
      tls = Scratch{};
  }
};

// Activation quantizers: the vectorized ones wherever a fast ISA runs (also in
// front of the portable kernel), bit-identical to the portable one.
void quantize(Isa isa, const float* x, int64_t K, int64_t b, int64_t e, const QuantizedRows& a) {
#if defined(__x86_64__) || defined(_M_X64)
  if (isa != Isa::kGeneric) return quantize_rows_avx2(x, K, b, e, a, 0, isa == Isa::kAvx512Vnni);
#endif
  (void)isa;
  quantize_rows(x, K, b, e, a);
}

void quantize_panel(Isa isa, const float* x, int64_t K, int64_t b, int64_t e, const PanelRows& a) {
#if defined(__x86_64__) || defined(_M_X64)
  quantize_panel_avx2(x, K, b, e, a, isa == Isa::kAvx512Vnni);  // panel kernels exist on x86 only so far
#else
  SQFX_CHECK(false, "sqfx: no panel quantizer for this architecture");
#endif
}

void raise_bad_col(const BsrWeight& w) {
  SQFX_CHECK(false, "sqfx.qlinear_dynamic: col_idx holds a block column index outside [0, ",
                  w.n_col_blocks, ")");
}

#if defined(__x86_64__) || defined(_M_X64)
bool onednn_unforced() {
  return g_forced.load(std::memory_order_relaxed) < 0 && dense_onednn_usable();
}

// Dense layout through oneDNN: activations quantized as int8 (q - 128), one
// aten::_int_mm, then the zero-point / scale / bias / ReLU epilogue in place.
// Activations quantized as int8 (q - 128), one aten::_int_mm against `weight` [N, K_pad], then
// the zero-point / scale / bias / ReLU epilogue in place; row_sum: the weight's true row sums,
// which undo the shift exactly (the op only bounds w_sum, and a tampered one must give the
// reference's answer here as on every other path).
void run_onednn(const float* x, int64_t M, const BsrWeight& w, const int8_t* weight, const int32_t* row_sum,
                bool relu, float* out) {
  const int64_t K = w.K, ld = w.n_col_blocks * w.col_block;
  QuantizedRows a{grow(tls.q, M * ld), grow(tls.scale, M), grow(tls.zp, M), M, ld};
  const bool wide = current_isa() == Isa::kAvx512Vnni;  // AVX-512 quantizer and epilogue
  run_range(M, 4 * K, [&](int64_t b, int64_t e) { quantize_rows_avx2(x, K, b, e, a, 0x80, wide); });
  dense_onednn_gemm(a, weight, w.N, ld, reinterpret_cast<int32_t*>(out));
  run_range(M, 4 * w.N, [&](int64_t b, int64_t e) {
    dense_onednn_epilogue_rows(a, w, relu, out, b, e, row_sum, wide);
  });
}

// The dense layout: its one block per row is the row (O(N x K) row sums per call).
bool run_dense_onednn(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out) {
  if (!dense_layout_cols_ok(w)) return false;
  const int64_t ld = w.n_col_blocks * w.col_block;
  int32_t* row_sum = grow(tls.row_sum, w.N);
  run_range(w.N, ld, [&](int64_t b, int64_t e) { dense_row_sums(w.values, ld, ld, b, e, row_sum); });
  run_onednn(x, M, w, w.values, row_sum, relu, out);
  return true;
}

// SQFX_DENSIFY=1 / 0 forces the densify row on / off (tests, benchmarks); by default it runs
// on AMX CPUs only: with VNNI alone oneDNN's dense GEMM has no such lead over the sparse one.
bool densify_enabled() {
  if (!onednn_unforced()) return false;
  const char* v = std::getenv("SQFX_DENSIFY");
  if (v != nullptr && (std::strcmp(v, "1") == 0 || std::strcmp(v, "0") == 0)) return v[0] == '1';
  return caps().amx_int8;
}

// A sparse 1x4 weight, large M: scattered into a dense [N, K_pad] int8 scratch (with its true
// row sums, so the q - 128 shift is undone exactly whatever w_sum says), then oneDNN's GEMM and
// the dense epilogue. A column out of range fails the call; two blocks of a row in the same
// column (a crafted weight, whose sum int8 may not hold) hand the call to the next row.
bool run_densified_onednn(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out) {
  const int64_t ld = w.n_col_blocks * w.col_block;
  int8_t* dense = grow(tls.dense, w.N * ld);
  int32_t* row_sum = grow(tls.row_sum, w.N);
  std::atomic<bool> bad_col{false}, repeated{false};
  run_range(w.N, 4 * ld, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      int8_t* row = dense + n * ld;
      std::memset(row, 0, static_cast<size_t>(ld));
      int32_t sum = 0;
      for (int64_t j = w.row_ptr[n]; j < w.row_ptr[n + 1]; ++j) {
        const int64_t col = w.col_idx_16 ? static_cast<const int16_t*>(w.col_idx)[j]
                                         : static_cast<const int32_t*>(w.col_idx)[j];
        if (col < 0 || col >= w.n_col_blocks) {
          bad_col.store(true, std::memory_order_relaxed);
          return;
        }
        int8_t* dst = row + col * 4;
        const int8_t* src = w.values + j * 4;
        if ((dst[0] | dst[1] | dst[2] | dst[3]) != 0) {
          repeated.store(true, std::memory_order_relaxed);
          return;
        }
        std::memcpy(dst, src, 4);
        sum += src[0] + src[1] + src[2] + src[3];
      }
      row_sum[n] = sum;  // |sum| <= 127 * K_pad: int32 below kMaxInt32InFeatures
    }
  });
  if (bad_col.load()) return false;
  if (repeated.load()) {
    const KernelEntry* self = std::begin(kTable);
    while (self->call != run_densified_onednn) ++self;
    run_entry(select_from(self + 1, Op::kDynamic, current_isa(), w, M), x, M, w, relu, out);
    return true;
  }
  run_onednn(x, M, w, dense, row_sum, relu, out);
  return true;
}
#endif

}  // namespace

Isa current_isa() {
  const int f = g_forced.load(std::memory_order_relaxed);
  return f >= 0 ? static_cast<Isa>(f) : best_isa();
}

const KernelEntry* kernel_table(int* count) {
  *count = static_cast<int>(sizeof(kTable) / sizeof(kTable[0]));
  return kTable;
}

const KernelEntry& select_from(const KernelEntry* from, Op op, Isa isa, const BsrWeight& w, int64_t M) {
  const bool int32_ok = w.n_col_blocks * w.col_block <= kMaxInt32InFeatures;
  const bool dense = is_dense_layout(w);
  const int64_t blocks = w.n_row_blocks * w.n_col_blocks;
  const bool mostly_dense = w.nnz * 100 >= kDenseMinPercent * blocks;
  const bool densifiable = !dense && w.nnz * 100 >= kDensifyMinPercent * blocks &&
                           w.n_col_blocks * w.col_block >= kDensifyMinInFeatures;
  const int64_t m = std::max<int64_t>(M, 1);  // M = 0 reports the M = 1 kernel (nothing runs)
  const KernelEntry* last = nullptr;
  for (const KernelEntry* it = from; it != std::end(kTable); ++it) {
    const KernelEntry& e = *it;
    if (e.op != op) continue;
    last = &e;
    if (static_cast<int>(e.isa) > static_cast<int>(isa)) continue;
    if (e.int32_acc && !int32_ok) continue;
    if (!block_matches(e.block, w)) continue;
    if (e.layout == Layout::kDense && !dense) continue;
    if (e.layout == Layout::kSparse && dense) continue;
    if (e.layout == Layout::kTiled && w.tiled == nullptr) continue;
    if (e.layout == Layout::kMostlyDense && !mostly_dense) continue;
    if (e.layout == Layout::kMostlySparse && mostly_dense) continue;
    if (e.layout == Layout::kSparseDensifiable && !densifiable) continue;
    if (e.layout == Layout::kFull && w.nnz != blocks) continue;
    if (m < e.m_min || m > e.m_max) continue;
    if (w.n_col_blocks * w.col_block < e.k_min) continue;
    if (e.usable != nullptr && !e.usable()) continue;
    return e;
  }
  return *last;  // unreachable: each op's last row (generic) matches everything
}

const KernelEntry& select_kernel(Op op, Isa isa, const BsrWeight& w, int64_t M) {
  return select_from(std::begin(kTable), op, isa, w, M);
}

const char* const* available_isas(int* count) {
  *count = static_cast<int>(best_isa()) + 1;
  return kIsaNames;
}

bool force_isa(const char* name) {
  if (std::strcmp(name, "auto") == 0) {
    g_forced.store(-1);
    return true;
  }
  int count = 0;
  available_isas(&count);
  for (int i = 0; i < count; ++i) {
    if (std::strcmp(name, kIsaNames[i]) == 0) {
      g_forced.store(i);
      return true;
    }
  }
  return false;
}

const char* active_isa_name() { return kIsaNames[static_cast<int>(current_isa())]; }

void run_qlinear(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out) {
  if (M <= 0 || w.N <= 0) return;
  const ReleaseLargeScratch release;
  run_entry(select_kernel(Op::kDynamic, current_isa(), w, M), x, M, w, relu, out);
}

namespace {

void run_entry(const KernelEntry& kernel, const float* x, int64_t M, const BsrWeight& w, bool relu, float* out) {
  const int64_t K = w.K, cb = w.col_block, rb = w.row_block;
  const int64_t ld = w.n_col_blocks * cb;
  const Isa isa = current_isa();
  const int64_t macs_per_rb =
      std::max<int64_t>(1, (w.nnz / std::max<int64_t>(1, w.n_row_blocks)) * rb * cb);
  std::atomic<bool> ok{true};

  if (kernel.call) {
    if (!kernel.call(x, M, w, relu, out)) raise_bad_col(w);
    return;
  }

  if (kernel.panel) {
    const int64_t rows16 = (M + 15) / 16 * 16;
    int64_t mc = rows16;
    // The AVX2 kernels widen each chunk to int16 (panel_i16_avx2.h): half the rows, so the
    // widened chunk is the one that stays in L2.
    const int64_t panel_bytes = isa == Isa::kAvx2 ? kPanelBytes / 2 : kPanelBytes;
    if (rows16 * ld > panel_bytes) mc = std::max<int64_t>(64, panel_bytes / ld / 64 * 64);
    mc = std::min(kernel.chunk_rows > 0 ? kernel.chunk_rows : mc, rows16);
    const int64_t n_chunks = (M + mc - 1) / mc;
    const int64_t padded = n_chunks * mc;
    PanelRows a{grow(tls.q, padded * ld), grow(tls.scale, padded), grow(tls.zp, padded), M, mc,
                ld / 4};
    std::fill(const_cast<float*>(a.scale) + M, const_cast<float*>(a.scale) + padded, 0.0f);
    std::fill(const_cast<int32_t*>(a.zp) + M, const_cast<int32_t*>(a.zp) + padded, 0);
    run_range(M, 4 * K, [&](int64_t b, int64_t e) { quantize_panel(isa, x, K, b, e, a); });
    const int64_t n_rb = w.n_row_blocks;
    run_range(n_chunks * n_rb, macs_per_rb * mc, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e;) {
        const int64_t chunk = t / n_rb, r = t % n_rb;
        const int64_t r_end = std::min(n_rb, r + (e - t));
        if (!kernel.panel(a, chunk, w, out, relu, r, r_end)) ok.store(false);
        t += r_end - r;
      }
    });
    if (!ok.load()) raise_bad_col(w);
    return;
  }

  // The tiled kernels read a window of kTiledWindow dwords from any start in
  // [0, max(0, n_col_blocks - kTiledWindow)]: rows hold at least that many.
  const bool tiled = kernel.layout == Layout::kTiled;
  // Rows a crafted row_perm leaves unnamed (check_tiled lets them through per call) read as 0;
  // only here, so a tiled weight run by another kernel (large M) pays no M x N memset.
  if (tiled) std::memset(out, 0, static_cast<size_t>(M * w.N) * sizeof(float));
  const int64_t ld_q = tiled ? std::max<int64_t>(ld, 4 * kTiledWindow) : ld;
  QuantizedRows a{grow(tls.q, M * ld_q), grow(tls.scale, M), grow(tls.zp, M), M, ld_q};
  run_range(M, 4 * K, [&](int64_t b, int64_t e) { quantize(isa, x, K, b, e, a); });
  // Work units: output row blocks, or tiles of kTiledLanes rows.
  const int64_t units = tiled ? w.tiled->n_tiles : w.n_row_blocks;
  run_range(units, macs_per_rb * M * (tiled ? kTiledLanes : 1), [&](int64_t b, int64_t e) {
    if (!kernel.rows(a, w, out, relu, b, e)) ok.store(false);
  });
  if (!ok.load()) raise_bad_col(w);
}

}  // namespace

}  // namespace sqfx
