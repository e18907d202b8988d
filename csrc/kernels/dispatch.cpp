// Picks and runs the kernel for one sqfx::qlinear_dynamic call.
//
// Dispatch rules (docs/design.md, "Kernels and layout"):
//  * ISA: the best the CPU has (avx512vnni > avx2 > generic), checked once with
//    __builtin_cpu_supports, unless a test forced one (force_isa).
//  * padded in_features > kMaxInt32InFeatures, or ISA generic: portable int64
//    kernel (bsr_generic.cpp).
//  * 1 x cb blocks, cb % 4 == 0 (1x4 sparse, and the dense layout 1 x K_pad):
//    M < kPanelMinRows: "rows" kernel on row-major activations (gathers);
//    else activations are quantized straight into a panel (PanelRows) and the
//    "panel" kernel register-tiles over input rows.
//    1x4 blocks (cb == 4) at M >= kGemmMinRows run the token-batch GEMM
//    (gemm_1x4_*: chunks of 64 rows, K and N cache blocking) instead.
//    The dense layout (one 1 x K_pad block per row) at M >= kPanelMinRows runs
//    the dense kernels, which register-tile over output rows as well.
//    Not forced (force_isa "auto") and M >= kOnednnMinRows, the dense layout
//    runs oneDNN's int8 GEMM (aten::_int_mm) where it is exact (VNNI CPUs).
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
#include <string>
#include <vector>

#include "../check.h"
#include "kernels.h"

namespace sqfx {
namespace {

constexpr int64_t kPanelMinRows = 4;
constexpr int64_t kPanelBytes = 256 * 1024;  // a chunk of activations stays in L2
constexpr int64_t kMinParallelWork = 1 << 17;
// Dense layout from this many rows on: oneDNN through aten::_int_mm (unless an
// ISA is forced: force_isa selects our own kernels of that ISA).
constexpr int64_t kOnednnMinRows = 16;
// 1x4 blocks from this many rows on: the token-batch GEMM (gemm_1x4_*), chunks
// of kGemmChunkRows rows (its register tile is 64 rows; K tiles keep the
// chunk's panel slice in L1, so the chunk need not fit in L2).
constexpr int64_t kGemmMinRows = 32;
constexpr int64_t kGemmChunkRows = 64;

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
  bool avx2 = false, vnni = false;
};

const Caps& caps() {
  static const Caps c = [] {
    Caps r;
    __builtin_cpu_init();
    r.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    r.vnni = r.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    return r;
  }();
  return c;
}

const char* const kIsaNames[] = {"generic", "avx2", "avx512vnni"};

Isa best_isa() {
  return caps().vnni ? Isa::kAvx512Vnni : caps().avx2 ? Isa::kAvx2 : Isa::kGeneric;
}

std::atomic<int> g_forced{-1};

Isa current_isa() {
  const int f = g_forced.load(std::memory_order_relaxed);
  return f >= 0 ? static_cast<Isa>(f) : best_isa();
}

struct Scratch {
  std::vector<uint8_t> q;
  std::vector<float> scale;
  std::vector<int32_t> zp;
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
    if (tls.q.capacity() + 8 * tls.scale.capacity() > kKeepScratchBytes) tls = Scratch{};
  }
};

template <typename T>
T* grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

// Runs f(begin, end) over [0, n): inline when the work is small or there is
// one thread, else split across torch's intra-op pool.
template <typename F>
void run_range(int64_t n, int64_t work_per_item, const F& f) {
  if (n <= 0) return;
  work_per_item = std::max<int64_t>(1, work_per_item);
  if (n < 2 || n * work_per_item < kMinParallelWork || torch::stable::get_num_threads() < 2) {
    f(0, n);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, (kMinParallelWork / 4) / work_per_item);
  torch::stable::parallel_for(0, n, grain, f);
}

using RowsKernel = bool (*)(const QuantizedRows&, const BsrWeight&, float*, bool, int64_t, int64_t);
using PanelKernel = bool (*)(const PanelRows&, int64_t, const BsrWeight&, float*, bool, int64_t,
                             int64_t);

void raise_bad_col(const BsrWeight& w) {
  SQFX_CHECK(false, "sqfx.qlinear_dynamic: col_idx holds a block column index outside [0, ",
                  w.n_col_blocks, ")");
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

}  // namespace

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
  const int64_t K = w.K, cb = w.col_block, rb = w.row_block;
  const int64_t ld = w.n_col_blocks * cb;
  const Isa isa = ld <= kMaxInt32InFeatures ? current_isa() : Isa::kGeneric;
  const bool vnni = isa == Isa::kAvx512Vnni;
  const int64_t macs_per_rb =
      std::max<int64_t>(1, (w.nnz / std::max<int64_t>(1, w.n_row_blocks)) * rb * cb);
  std::atomic<bool> ok{true};

  if (isa != Isa::kGeneric && g_forced.load(std::memory_order_relaxed) < 0 &&
      M >= kOnednnMinRows && is_dense_layout(w) && dense_onednn_usable()) {
    QuantizedRows a{grow(tls.q, M * ld), grow(tls.scale, M), grow(tls.zp, M), M, ld};
    run_range(M, 4 * K, [&](int64_t b, int64_t e) {
      quantize_rows_avx2(x, K, b, e, a, 0x80);
    });
    if (!dense_onednn_gemm(a, w, out)) raise_bad_col(w);
    run_range(M, 4 * w.N, [&](int64_t b, int64_t e) {
      dense_onednn_epilogue_rows(a, w, relu, out, b, e);
    });
    return;
  }

  if (isa != Isa::kGeneric && rb == 1 && cb % 4 == 0 && M >= kPanelMinRows) {
    const int64_t rows16 = (M + 15) / 16 * 16;
    const bool gemm = cb == 4 && M >= kGemmMinRows && !is_dense_layout(w) && gemm_1x4_enabled();
    int64_t mc = rows16;
    if (rows16 * ld > kPanelBytes) mc = std::max<int64_t>(64, kPanelBytes / ld / 64 * 64);
    mc = std::min(gemm ? kGemmChunkRows : mc, rows16);
    const int64_t n_chunks = (M + mc - 1) / mc;
    const int64_t padded = n_chunks * mc;
    PanelRows a{grow(tls.q, padded * ld), grow(tls.scale, padded), grow(tls.zp, padded), M, mc,
                ld / 4};
    std::fill(const_cast<float*>(a.scale) + M, const_cast<float*>(a.scale) + padded, 0.0f);
    std::fill(const_cast<int32_t*>(a.zp) + M, const_cast<int32_t*>(a.zp) + padded, 0);
    run_range(M, 4 * K, [&](int64_t b, int64_t e) { quantize_panel_avx2(x, K, b, e, a); });
    PanelKernel kernel = vnni ? bsr_1x4_panel_avx512vnni : bsr_1x4_panel_avx2;
    if (gemm) kernel = vnni ? gemm_1x4_64x1_avx512vnni : gemm_1x4_32x1_avx2;
    if (is_dense_layout(w)) kernel = vnni ? dense_panel_avx512vnni : dense_panel_avx2;
    const int64_t n_rb = w.n_row_blocks;
    run_range(n_chunks * n_rb, macs_per_rb * mc, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e;) {
        const int64_t chunk = t / n_rb, r = t % n_rb;
        const int64_t r_end = std::min(n_rb, r + (e - t));
        if (!kernel(a, chunk, w, out, relu, r, r_end)) ok.store(false);
        t += r_end - r;
      }
    });
    if (!ok.load()) raise_bad_col(w);
    return;
  }

  QuantizedRows a{grow(tls.q, M * ld), grow(tls.scale, M), grow(tls.zp, M), M, ld};
  run_range(M, 4 * K, [&](int64_t b, int64_t e) {
    if (isa == Isa::kGeneric) {
      quantize_rows(x, K, b, e, a);
    } else {
      quantize_rows_avx2(x, K, b, e, a);
    }
  });
  RowsKernel kernel = bsr_generic;
  if (isa != Isa::kGeneric && rb == 1 && cb % 4 == 0) {
    kernel = vnni ? bsr_1x4_rows_avx512vnni : bsr_1x4_rows_avx2;
  } else if (isa != Isa::kGeneric && cb == 1 && rb % 8 == 0) {
    kernel = bsr_8x1_avx2;  // also on VNNI CPUs: faster than a vpdpbusd variant
  }
  run_range(w.n_row_blocks, macs_per_rb * M, [&](int64_t b, int64_t e) {
    if (!kernel(a, w, out, relu, b, e)) ok.store(false);
  });
  if (!ok.load()) raise_bad_col(w);
}

}  // namespace sqfx
