// sqfx::qlinear_weight_only: fp32 activations x int8 block-sparse weights.
//
// The activation mode for layers whose inputs do not survive 8-bit quantization
// (FFN down-projections after GELU carry outliers). Weights stay in the packed
// int8 BSR format of qlinear_dynamic (same values / row_ptr / col_idx / w_scale;
// no w_sum: there is no activation zero point) and are dequantized on the fly:
//   y[m, n] = (sum_k x[m, k] * float(w_int8[n, k])) * w_scale[n] + bias[n]
// with fp32 accumulation. At small M the layer is memory-bound on the weights,
// which stay int8 (4x fewer bytes than fp32) and sparse, so the mode costs little.
//
// Numerics vs sqfx/reference.py::qlinear_weight_only: equal up to float
// summation order (the kernels sum per block, the reference uses a dense
// matmul); not bit-identical, unlike qlinear_dynamic.
//
// Registered as a FRAGMENT of the sqfx library (the library itself is defined
// once, in qlinear_dynamic.cpp).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include "kernels/kernels.h"
#include "kernels/wo_kernels.h"
#include "empty_cpu.h"
#include "packed_checks.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SQFX_WO_X86 1
#else
#define SQFX_WO_X86 0
#endif

namespace sqfx {
namespace {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

constexpr const char* kOp = "sqfx.qlinear_weight_only";

// The validated weight (csrc/packed_checks.h).
using WoWeight = CheckedPacked;

// The fp32 activations: rows of stride ld >= n_col_blocks * cb (zero padded).
struct Rows {
  const float* x;
  int64_t M, ld;
};

inline float finish(float acc, const WoWeight& w, int64_t n, bool relu) {
  float y = acc * w.w_scale[n];
  if (w.bias) y = y + w.bias[n];
  if (relu) y = (y < 0.0f) ? 0.0f : y;  // keeps NaN, as torch.relu does
  return y;
}

// Portable kernel: any block shape. Row block outermost so its weights stay in
// cache while every input row passes over them.
template <typename Index>
bool wo_generic(const Rows& a, const WoWeight& w, const Index* col_idx, float* out,
                bool relu, int64_t rb_begin, int64_t rb_end) {
  const int64_t rb = w.row_block, cb = w.col_block, block = rb * cb;
  std::vector<float> acc(rb);
  bool ok = true;
  for (int64_t i = rb_begin; i < rb_end; ++i) {
    for (int64_t m = 0; m < a.M; ++m) {
      const float* x = a.x + m * a.ld;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = w.row_ptr[i]; j < w.row_ptr[i + 1]; ++j) {
        const int64_t col = static_cast<int64_t>(col_idx[j]);
        if (col < 0 || col >= w.n_col_blocks) {
          ok = false;
          continue;
        }
        const float* xa = x + col * cb;
        const int8_t* v = w.values + j * block;
        for (int64_t r = 0; r < rb; ++r) {
          float s = 0.0f;
          for (int64_t c = 0; c < cb; ++c) s += xa[c] * static_cast<float>(v[r * cb + c]);
          acc[r] += s;
        }
      }
      for (int64_t r = 0; r < rb; ++r) {
        const int64_t n = i * rb + r;
        if (n >= w.N) break;
        out[m * w.N + n] = finish(acc[r], w, n, relu);
      }
    }
  }
  return ok;
}

#if SQFX_WO_X86
#define SQFX_WO_AVX2 __attribute__((target("avx2,fma")))

SQFX_WO_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// AVX2 + FMA: the int8 weights of each block row are widened to fp32 in
// registers (never written back), 8 or 4 columns at a time. Two accumulators
// alternate between blocks to hide the FMA latency of 1x4 blocks.
template <typename Index>
SQFX_WO_AVX2 bool wo_avx2(const Rows& a, const WoWeight& w, const Index* col_idx, float* out,
                          bool relu, int64_t rb_begin, int64_t rb_end) {
  const int64_t rb = w.row_block, cb = w.col_block, block = rb * cb;
  bool ok = true;
  for (int64_t i = rb_begin; i < rb_end; ++i) {
    const int64_t j0 = w.row_ptr[i], j1 = w.row_ptr[i + 1];
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t col = static_cast<int64_t>(col_idx[j]);
      if (col < 0 || col >= w.n_col_blocks) ok = false;
    }
    if (!ok) return false;  // the op raises; nothing below reads out of range
    if (rb == 1 && cb == 4) {
      // The default 1x4 blocks: the int8 values of consecutive blocks are contiguous, so two
      // blocks are one 8-wide FMA (their x halves gathered from two columns); four blocks per
      // step over two accumulators.
      for (int64_t m = 0; m < a.M; ++m) {
        const float* x = a.x + m * a.ld;
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int64_t j = j0;
        for (; j + 4 <= j1; j += 4) {
          int64_t b01, b23;
          std::memcpy(&b01, w.values + j * 4, 8);
          std::memcpy(&b23, w.values + j * 4 + 8, 8);
          const __m256 w01 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(b01)));
          const __m256 w23 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(b23)));
          const __m256 x01 = _mm256_insertf128_ps(
              _mm256_castps128_ps256(_mm_loadu_ps(x + static_cast<int64_t>(col_idx[j]) * 4)),
              _mm_loadu_ps(x + static_cast<int64_t>(col_idx[j + 1]) * 4), 1);
          const __m256 x23 = _mm256_insertf128_ps(
              _mm256_castps128_ps256(_mm_loadu_ps(x + static_cast<int64_t>(col_idx[j + 2]) * 4)),
              _mm_loadu_ps(x + static_cast<int64_t>(col_idx[j + 3]) * 4), 1);
          acc0 = _mm256_fmadd_ps(x01, w01, acc0);
          acc1 = _mm256_fmadd_ps(x23, w23, acc1);
        }
        __m128 acc4 = _mm_setzero_ps();
        for (; j < j1; ++j) {
          int32_t bits;
          std::memcpy(&bits, w.values + j * 4, 4);
          const __m128 wf = _mm_cvtepi32_ps(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(bits)));
          acc4 = _mm_fmadd_ps(_mm_loadu_ps(x + static_cast<int64_t>(col_idx[j]) * 4), wf, acc4);
        }
        const __m256 acc01 = _mm256_add_ps(acc0, acc1);
        const __m128 lo = _mm256_castps256_ps128(acc01);
        const __m128 hi = _mm256_extractf128_ps(acc01, 1);
        __m128 s = _mm_add_ps(_mm_add_ps(lo, hi), acc4);
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        out[m * w.N + i] = finish(_mm_cvtss_f32(s), w, i, relu);
      }
      continue;
    }
    for (int64_t m = 0; m < a.M; ++m) {
      const float* x = a.x + m * a.ld;
      for (int64_t r = 0; r < rb; ++r) {
        const int64_t n = i * rb + r;
        if (n >= w.N) break;
        __m256 acc8a = _mm256_setzero_ps(), acc8b = _mm256_setzero_ps();
        __m128 acc4a = _mm_setzero_ps(), acc4b = _mm_setzero_ps();
        float tail = 0.0f;
        for (int64_t j = j0; j < j1; ++j) {
          const float* xa = x + static_cast<int64_t>(col_idx[j]) * cb;
          const int8_t* v = w.values + j * block + r * cb;
          const bool odd = (j - j0) & 1;
          int64_t c = 0;
          for (; c + 8 <= cb; c += 8) {
            int64_t bits;
            std::memcpy(&bits, v + c, 8);
            const __m256 wf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(bits)));
            if (odd) acc8b = _mm256_fmadd_ps(_mm256_loadu_ps(xa + c), wf, acc8b);
            else acc8a = _mm256_fmadd_ps(_mm256_loadu_ps(xa + c), wf, acc8a);
          }
          for (; c + 4 <= cb; c += 4) {
            int32_t bits;
            std::memcpy(&bits, v + c, 4);
            const __m128 wf = _mm_cvtepi32_ps(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(bits)));
            if (odd) acc4b = _mm_fmadd_ps(_mm_loadu_ps(xa + c), wf, acc4b);
            else acc4a = _mm_fmadd_ps(_mm_loadu_ps(xa + c), wf, acc4a);
          }
          for (; c < cb; ++c) tail += xa[c] * static_cast<float>(v[c]);
        }
        const __m256 acc8 = _mm256_add_ps(acc8a, acc8b);
        const __m256 acc4 = _mm256_castps128_ps256(_mm_add_ps(acc4a, acc4b));
        const float acc = hsum8(acc8) + hsum8(_mm256_insertf128_ps(acc4, _mm_setzero_ps(), 1)) + tail;
        out[m * w.N + n] = finish(acc, w, n, relu);
      }
    }
  }
  return ok;
}

#endif

template <typename Index>
bool run_rows_kernel(bool avx2, const Rows& a, const WoWeight& w, const Index* col_idx, float* out,
                     bool relu, int64_t b, int64_t e) {
#if SQFX_WO_X86
  if (avx2) return wo_avx2(a, w, col_idx, out, relu, b, e);
#endif
  return wo_generic(a, w, col_idx, out, relu, b, e);
}

// True if some x[k], k < K, is NaN or +-Inf (exponent all ones). Integer test: vectorizes.
bool row_has_nonfinite(const float* x, int64_t K) {
  uint32_t any = 0;
  for (int64_t k = 0; k < K; ++k) {
    uint32_t bits;
    std::memcpy(&bits, x + k, 4);
    any |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return any != 0;
}

// The kernels skip pruned blocks; the reference multiplies every x[k] by its weight, zero or
// not, so a NaN or Inf x[k] under a pruned block makes y[n] NaN (NaN * 0, Inf * 0). Stored
// blocks propagate it already (their zero weights multiply too). For each row holding a
// non-finite value: a row block whose stored blocks miss one of its non-finite block columns
// gets NaN outputs. O(M K) scan; O(nnz) per non-finite row, which is the rare case.
template <typename Index>
void propagate_nonfinite(const Rows& a, const WoWeight& w, const Index* col_idx, float* out) {
  std::vector<int64_t> bad_cols;    // distinct non-finite block columns of the row
  std::vector<int64_t> stamp;       // stamp[col]: (row tag) if bad, (row block tag) once counted
  for (int64_t m = 0; m < a.M; ++m) {
    const float* x = a.x + m * a.ld;
    if (!row_has_nonfinite(x, w.K)) continue;
    if (stamp.empty()) stamp.assign(static_cast<size_t>(w.n_col_blocks), -1);
    const int64_t row_tag = -2 - m;  // negative: never a row block tag
    bad_cols.clear();
    for (int64_t k = 0; k < w.K; ++k) {
      if (std::isfinite(x[k])) continue;
      const int64_t col = k / w.col_block;
      if (stamp[col] != row_tag) {
        stamp[col] = row_tag;
        bad_cols.push_back(col);
      }
    }
    const int64_t n_bad = static_cast<int64_t>(bad_cols.size());
    for (int64_t i = 0; i < w.n_row_blocks; ++i) {
      int64_t covered = 0;
      for (int64_t j = w.row_ptr[i]; j < w.row_ptr[i + 1]; ++j) {
        const int64_t col = static_cast<int64_t>(col_idx[j]);  // range-checked by the kernels
        if (stamp[col] == row_tag) {
          stamp[col] = i;  // counted for row block i (duplicates count once)
          ++covered;
        }
      }
      for (int64_t j = w.row_ptr[i]; j < w.row_ptr[i + 1]; ++j) {
        const int64_t col = static_cast<int64_t>(col_idx[j]);
        if (stamp[col] == i) stamp[col] = row_tag;  // restore for the next row block
      }
      if (covered == n_bad) continue;
      for (int64_t n = i * w.row_block; n < std::min(w.N, (i + 1) * w.row_block); ++n) {
        out[m * w.N + n] = std::numeric_limits<float>::quiet_NaN();
      }
    }
  }
}


// ---- Kernel choice (see csrc/kernels/wo_kernels.h for the tiled kernels) ----
// ISA: the one sqfx.ops.force_isa / the CPU selects for both ops (csrc/kernels/dispatch.cpp);
// the AVX-512 kernels need only AVX-512F/BW/VL, which every "avx512vnni" CPU has.
enum class WoIsa { kGeneric, kAvx2, kAvx512 };

WoIsa wo_isa() {
  const char* name = active_isa_name();
  if (std::strcmp(name, "avx512vnni") == 0) return WoIsa::kAvx512;
  if (std::strcmp(name, "avx2") == 0) return WoIsa::kAvx2;
  return WoIsa::kGeneric;
}

// Sparse layers below this many input rows run the rows kernel (each block dequantized per
// row, weights reread from L1); at and above, the transposed-activation bsr kernel.
constexpr int64_t kTileMinRows = 16;
// Dense-ish layers below this many rows run the rowdot kernel (int8 widened in registers); at
// and above, the fp32 panel kernel (dequantizes a panel once, best register reuse). Measured
// crossover (768x3072 and 3072x768, 0%, one thread): AVX-512 rowdot 1.7x F.linear at M = 128
// against the panel's 1.3-1.5x, the panel ahead from M = 512; AVX2 mixed at 128, panel at 512.
int64_t panel_min_rows(WoIsa isa) { return isa == WoIsa::kAvx512 ? 256 : 64; }
constexpr int64_t kRowdotBlockBytes = 256 * 1024, kRowdotMinBlockRows = 36;
// Stored fraction of the blocks from which the dense tile (dense FMA count, best register
// reuse) beats the sparse one (FMAs only for stored blocks, one load per FMA).
constexpr int64_t kDenseMinPercent = 40;
// Calls with fewer multiply-adds run on the calling thread: no thread-pool hand-off.
constexpr int64_t kMinParallelWork = 1 << 17;

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

// Scratch that only grows: no allocation per call once warm.
thread_local std::vector<float> tls_panel, tls_transposed, tls_wbuf, tls_padded;
thread_local std::vector<int8_t> tls_rows8;

template <typename T>
T* grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

BsrWeight as_bsr(const WoWeight& p) {
  return BsrWeight{p.values, p.row_ptr, p.col_idx, p.col_idx_16, p.w_scale, nullptr, p.bias,
                   p.N, p.K, p.row_block, p.col_block, p.n_row_blocks, p.n_col_blocks, p.nnz};
}

// Chunk `chunk` of mt input rows of x [M, K] into dst [ld][mt], zero past K and past M.
void transpose_chunk(const float* x, int64_t M, int64_t K, int64_t ld, int64_t mt, int64_t chunk,
                     float* dst) {
  const int64_t m0 = chunk * mt, rows = std::min(mt, M - m0);
  constexpr int64_t kStep = 16;  // k columns per pass: the written lines stay in L1
  for (int64_t k0 = 0; k0 < ld; k0 += kStep) {
    const int64_t k1 = std::min(ld, k0 + kStep), kr = std::min(K, k1);
    for (int64_t m = 0; m < mt; ++m) {
      const float* src = x + (m0 + m) * K;
      int64_t k = k0;
      if (m < rows) {
        for (; k < kr; ++k) dst[k * mt + m] = src[k];
      }
      for (; k < k1; ++k) dst[k * mt + m] = 0.0f;
    }
  }
}

bool is_denseish(const WoWeight& w) {
  return w.nnz * 100 >= kDenseMinPercent * w.n_row_blocks * w.n_col_blocks;
}

// Dense-ish layer, M < panel_min_rows, AVX2/AVX-512.
bool run_rowdot(WoIsa isa, const float* x, int64_t M, const WoWeight& p, bool relu, float* out) {
  const BsrWeight w = as_bsr(p);
  const int64_t ld = w.n_col_blocks * w.col_block;
  const int64_t kpad = (ld + kWoRowdotAlign - 1) / kWoRowdotAlign * kWoRowdotAlign;
  if (kpad != w.K) {  // rows zero padded to whole vectors
    float* padded = grow(tls_padded, M * kpad);
    for (int64_t m = 0; m < M; ++m) {
      std::memcpy(padded + m * kpad, x + m * w.K, sizeof(float) * w.K);
      std::fill(padded + m * kpad + w.K, padded + (m + 1) * kpad, 0.0f);
    }
    x = padded;
  }
  const auto kernel = isa == WoIsa::kAvx512 ? wo_f32_rowdot_6x4_avx512 : wo_f32_rowdot_3x4_avx2;
  // Blocks of input rows whose activations (about kRowdotBlockBytes) stay in L2 while every
  // group of 4 weight rows passes over them; the weights are read once per block, so a block
  // holds at least kRowdotMinBlockRows rows (6-row blocks made 4096x4096 at M = 32 1.7x slower:
  // 16 MB of weights read from memory per 6 rows).
  const int64_t mb = std::min<int64_t>(
      M, std::max<int64_t>(kRowdotMinBlockRows, (kRowdotBlockBytes / 4) / kpad / 6 * 6));
  const int64_t n_mblocks = (M + mb - 1) / mb, n_groups = (w.N + 3) / 4;
  std::atomic<bool> ok{true};
  run_range(n_mblocks * n_groups, mb * kpad * 4, [&](int64_t b, int64_t e) {
    int8_t* rows = grow(tls_rows8, 4 * kpad);
    for (int64_t t = b; t < e;) {
      const int64_t blk = t / n_groups, g = t % n_groups, g_end = std::min(n_groups, g + (e - t));
      const int64_t m0 = blk * mb;
      const WoRows a{x + m0 * kpad, std::min(mb, M - m0), kpad, w.K};
      if (!kernel(a, w, relu, out + m0 * w.N, g, g_end, rows)) ok.store(false);
      t += g_end - g;
    }
  });
  return ok.load();
}

// AVX2/AVX-512 and M >= kTileMinRows (sparse) or panel_min_rows (dense-ish). Returns false on
// a bad block column index.
bool run_tiled(WoIsa isa, const float* x, int64_t M, const WoWeight& p, bool relu, float* out) {
  const BsrWeight w = as_bsr(p);
  const int64_t ld = w.n_col_blocks * w.col_block;
  const bool avx512 = isa == WoIsa::kAvx512;
  std::atomic<bool> ok{true};
  if (is_denseish(p)) {
    const int64_t nr = avx512 ? kWoDenseNr512 : kWoDenseNr256;
    const auto kernel = avx512 ? wo_f32_dense_12x32_avx512 : wo_f32_dense_6x16_avx2;
    const WoRows a{x, M, w.K, w.K};
    run_range((w.N + nr - 1) / nr, M * ld * nr, [&](int64_t b, int64_t e) {
      if (!kernel(a, w, relu, out, b, e, grow(tls_panel, ld * nr))) ok.store(false);
    });
    return ok.load();
  }
  // AVX-512 CPUs run the 32-row AVX2 tile for M <= 32: a half-empty 64-row tile was slower
  // (768x3072, 80%: 0.87 ms against 0.65 ms at M = 16 and 32; scripts/bench_weight_only.py).
  const bool wide = avx512 && M > kWoBsrMt256;
  const int64_t mt = wide ? kWoBsrMt512 : kWoBsrMt256;
  const auto kernel = wide ? wo_f32_bsr_m64_avx512 : wo_f32_bsr_m32_avx2;
  const int64_t n_chunks = (M + mt - 1) / mt, n_rb = w.n_row_blocks;
  float* xt = grow(tls_transposed, n_chunks * ld * mt);
  run_range(n_chunks, ld * mt, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) transpose_chunk(x, M, w.K, ld, mt, c, xt + c * ld * mt);
  });
  int64_t max_blocks = 0;
  for (int64_t i = 0; i < n_rb; ++i) max_blocks = std::max<int64_t>(max_blocks, w.row_ptr[i + 1] - w.row_ptr[i]);
  const int64_t wbuf_size = std::max<int64_t>(1, max_blocks * w.row_block * w.col_block);
  const int64_t macs_per_rb = std::max<int64_t>(1, w.nnz / std::max<int64_t>(1, n_rb)) * w.row_block * w.col_block;
  run_range(n_chunks * n_rb, macs_per_rb * mt, [&](int64_t b, int64_t e) {
    float* wbuf = grow(tls_wbuf, wbuf_size);
    for (int64_t t = b; t < e;) {
      const int64_t chunk = t / n_rb, r = t % n_rb, r_end = std::min(n_rb, r + (e - t));
      const int64_t m0 = chunk * mt;
      if (!kernel(xt + chunk * ld * mt, m0, std::min(mt, M - m0), w, relu, out, r, r_end, wbuf)) {
        ok.store(false);
      }
      t += r_end - r;
    }
  });
  return ok.load();
}

// Small M, or no AVX2: the rows kernels, over row-major rows padded to whole blocks.
bool run_rows(WoIsa isa, const float* x, int64_t M, const WoWeight& w, bool relu, float* out) {
  // A last block column that runs past in_features reads zero padding, never past the row.
  const int64_t ld = w.n_col_blocks * w.col_block;
  Rows a{x, M, w.K};
  if (ld != w.K) {
    float* padded = grow(tls_padded, M * ld);
    for (int64_t m = 0; m < M; ++m) {
      std::memcpy(padded + m * ld, x + m * w.K, sizeof(float) * w.K);
      std::fill(padded + m * ld + w.K, padded + (m + 1) * ld, 0.0f);
    }
    a = Rows{padded, M, ld};
  }
  const bool avx2 = isa != WoIsa::kGeneric;
  std::atomic<bool> ok{true};
  const int64_t work_per_rb =
      M * std::max<int64_t>(1, w.nnz / std::max<int64_t>(1, w.n_row_blocks)) * w.row_block * w.col_block;
  run_range(w.n_row_blocks, work_per_rb, [&](int64_t b, int64_t e) {
    const bool good =
        w.col_idx_16 ? run_rows_kernel(avx2, a, w, static_cast<const int16_t*>(w.col_idx), out, relu, b, e)
                     : run_rows_kernel(avx2, a, w, static_cast<const int32_t*>(w.col_idx), out, relu, b, e);
    if (!good) ok.store(false);
  });
  return ok.load();
}

}  // namespace

Tensor qlinear_weight_only(Tensor input, Tensor values, Tensor row_ptr, Tensor col_idx,
                           Tensor w_scale, std::optional<Tensor> bias, int64_t in_features,
                           bool relu) {
  const CheckedPacked p = check_packed(kOp, values, row_ptr, col_idx, w_scale, bias, in_features);
  const WoWeight& w = p;
  int64_t M = 0;
  Tensor x = check_input(kOp, input, p, &M);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = w.N;
  // The final shape right away: a reshape afterwards would be one more dispatcher call.
  Tensor out = empty_cpu_float(out_shape);
  if (M > 0 && w.N > 0) {
    const float* xp = x.const_data_ptr<float>();
    float* yp = out.mutable_data_ptr<float>();
    const WoIsa isa = wo_isa();
    bool ok;
    if (isa == WoIsa::kGeneric) {
      ok = run_rows(isa, xp, M, w, relu, yp);
    } else if (is_denseish(w)) {
      ok = M < panel_min_rows(isa) ? run_rowdot(isa, xp, M, w, relu, yp) : run_tiled(isa, xp, M, w, relu, yp);
    } else {
      ok = M < kTileMinRows ? run_rows(isa, xp, M, w, relu, yp) : run_tiled(isa, xp, M, w, relu, yp);
    }
    STD_TORCH_CHECK(ok, kOp, ": col_idx holds a block column index outside [0, ", w.n_col_blocks, ")");
    const Rows rows{xp, M, w.K};
    if (w.col_idx_16) {
      propagate_nonfinite(rows, w, static_cast<const int16_t*>(w.col_idx), yp);
    } else {
      propagate_nonfinite(rows, w, static_cast<const int32_t*>(w.col_idx), yp);
    }
  }
  return out;
}

}  // namespace sqfx

STABLE_TORCH_LIBRARY_FRAGMENT(sqfx, m) {
  m.def(
      "qlinear_weight_only(Tensor input, Tensor values, Tensor row_ptr, Tensor col_idx, "
      "Tensor w_scale, Tensor? bias, int in_features, bool relu) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(sqfx, CPU, m) {
  m.impl("qlinear_weight_only", TORCH_BOX(&sqfx::qlinear_weight_only));
}
