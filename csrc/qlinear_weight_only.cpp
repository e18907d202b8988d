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
#include "kernels/parallel.h"
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

// The validated weight as the kernels see it (kernels.h; w_sum unused).
using WoWeight = BsrWeight;
using Rows = FloatRows;

inline float finish(float acc, const WoWeight& w, int64_t n, bool relu) {
  float y = acc * w.w_scale[n];
  if (w.bias) y = y + w.bias[n];
  if (relu) y = (y < 0.0f) ? 0.0f : y;  // keeps NaN, as torch.relu does
  return y;
}

// Portable kernel: any block shape. Row block outermost so its weights stay in
// cache while every input row passes over them.
template <typename Index>
bool wo_generic_impl(const Rows& a, const WoWeight& w, const Index* col_idx, float* out,
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

template <typename Index>
SQFX_WO_AVX2 bool cols_in_range(const Index* col_idx, int64_t j0, int64_t j1, int64_t n_col_blocks) {
  // Limit 2^31 at most: an int32 index >= 0 is then always below it, a negative one never.
  const uint32_t limit = static_cast<uint32_t>(std::min<int64_t>(n_col_blocks, int64_t{1} << 31));
  uint32_t bad = 0;
  for (int64_t j = j0; j < j1; ++j) bad |= static_cast<uint32_t>(static_cast<int32_t>(col_idx[j])) >= limit;
  return bad == 0;
}

SQFX_WO_AVX2 inline __m128 hsum4(__m128 s) {
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_add_ss(s, _mm_movehdup_ps(s));
}

// Two consecutive 1x4 blocks j, j + 1 of a row: their 8 int8 values are contiguous, their
// activations come from two block columns.
template <typename Index>
SQFX_WO_AVX2 inline __m256 fma_2blocks(const float* x, const WoWeight& w, const Index* col_idx, int64_t j,
                                       __m256 acc) {
  int64_t bits;
  std::memcpy(&bits, w.values + j * 4, 8);
  const __m256 wf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(bits)));
  const __m256 xv = _mm256_insertf128_ps(
      _mm256_castps128_ps256(_mm_loadu_ps(x + static_cast<int64_t>(col_idx[j]) * 4)),
      _mm_loadu_ps(x + static_cast<int64_t>(col_idx[j + 1]) * 4), 1);
  return _mm256_fmadd_ps(xv, wf, acc);
}

template <typename Index>
SQFX_WO_AVX2 inline __m128 fma_block(const float* x, const WoWeight& w, const Index* col_idx, int64_t j,
                                     __m128 acc) {
  int32_t bits;
  std::memcpy(&bits, w.values + j * 4, 4);
  const __m128 wf = _mm_cvtepi32_ps(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(bits)));
  return _mm_fmadd_ps(_mm_loadu_ps(x + static_cast<int64_t>(col_idx[j]) * 4), wf, acc);
}

// Blocks [j, j_end) of one row of 1x4 blocks: the 4 partial sums (lanes of the result).
template <typename Index>
SQFX_WO_AVX2 inline __m128 row_1x4(const float* x, const WoWeight& w, const Index* col_idx, int64_t j,
                                   int64_t j_end) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; j + 4 <= j_end; j += 4) {
    acc0 = fma_2blocks(x, w, col_idx, j, acc0);
    acc1 = fma_2blocks(x, w, col_idx, j + 2, acc1);
  }
  if (j + 2 <= j_end) {
    acc0 = fma_2blocks(x, w, col_idx, j, acc0);
    j += 2;
  }
  const __m256 acc = _mm256_add_ps(acc0, acc1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  if (j < j_end) s = fma_block(x, w, col_idx, j, s);
  return s;
}

// Output rows i .. i + 3 of 1x4 blocks for one input row x (y: that row's outputs). Rows are
// short (384 inputs at 80% is ~19 blocks), so one row at a time is bound by the FMA chain
// and its horizontal sum; four rows give four independent chains over their common length
// and one transpose-add for the four sums.
template <typename Index>
SQFX_WO_AVX2 inline void rows4_1x4(const float* x, const WoWeight& w, const Index* col_idx, int64_t i,
                                   bool relu, float* y) {
  int64_t j[4], e[4];
  for (int r = 0; r < 4; ++r) {
    j[r] = w.row_ptr[i + r];
    e[r] = w.row_ptr[i + r + 1];
  }
  const int64_t common = std::min(std::min(e[0] - j[0], e[1] - j[1]), std::min(e[2] - j[2], e[3] - j[3])) / 2 * 2;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
         acc3 = _mm256_setzero_ps();
  for (int64_t t = 0; t < common; t += 2) {
    acc0 = fma_2blocks(x, w, col_idx, j[0] + t, acc0);
    acc1 = fma_2blocks(x, w, col_idx, j[1] + t, acc1);
    acc2 = fma_2blocks(x, w, col_idx, j[2] + t, acc2);
    acc3 = fma_2blocks(x, w, col_idx, j[3] + t, acc3);
  }
  __m128 s[4];
  const __m256 accs[4] = {acc0, acc1, acc2, acc3};
  for (int r = 0; r < 4; ++r) {
    s[r] = _mm_add_ps(_mm256_castps256_ps128(accs[r]), _mm256_extractf128_ps(accs[r], 1));
    s[r] = _mm_add_ps(s[r], row_1x4(x, w, col_idx, j[r] + common, e[r]));  // the row's own tail
  }
  __m128 v = _mm_hadd_ps(_mm_hadd_ps(s[0], s[1]), _mm_hadd_ps(s[2], s[3]));  // the 4 row sums
  v = _mm_mul_ps(v, _mm_loadu_ps(w.w_scale + i));
  if (w.bias) v = _mm_add_ps(v, _mm_loadu_ps(w.bias + i));
  if (relu) v = _mm_max_ps(_mm_setzero_ps(), v);  // max(0, NaN) is NaN, as torch.relu keeps it
  _mm_storeu_ps(y + i, v);
}

// AVX2 + FMA: the int8 weights of each block row are widened to fp32 in
// registers (never written back), 8 or 4 columns at a time; 1x4 blocks take
// rows4_1x4 (four output rows' chains interleaved), other shapes alternate two
// accumulators between blocks.
template <typename Index>
SQFX_WO_AVX2 bool wo_avx2_impl(const Rows& a, const WoWeight& w, const Index* col_idx, float* out,
                          bool relu, int64_t rb_begin, int64_t rb_end) {
  const int64_t rb = w.row_block, cb = w.col_block, block = rb * cb;
  // Every block column of the range, before any is read: one vectorized pass (an OR of
  // unsigned compares, negative reads as huge), a small share of a pass over the values.
  if (!cols_in_range(col_idx, w.row_ptr[rb_begin], w.row_ptr[rb_end], w.n_col_blocks)) return false;
  if (rb == 1 && cb == 4) {
    // Groups of 4 output rows outermost: their weights stay in L1 while every input row passes.
    int64_t i = rb_begin;
    for (; i + 4 <= rb_end; i += 4) {
      for (int64_t m = 0; m < a.M; ++m) rows4_1x4(a.x + m * a.ld, w, col_idx, i, relu, out + m * w.N);
    }
    for (; i < rb_end; ++i) {
      for (int64_t m = 0; m < a.M; ++m) {
        const __m128 s = hsum4(row_1x4(a.x + m * a.ld, w, col_idx, w.row_ptr[i], w.row_ptr[i + 1]));
        out[m * w.N + i] = finish(_mm_cvtss_f32(s), w, i, relu);
      }
    }
    return true;
  }
  for (int64_t i = rb_begin; i < rb_end; ++i) {
    const int64_t j0 = w.row_ptr[i], j1 = w.row_ptr[i + 1];
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
  return true;
}

#endif

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

}  // namespace

// Entry points of the kernel table (dispatch.cpp: f32_qc8w_* rows).
bool wo_generic(const FloatRows& a, const BsrWeight& w, float* out, bool relu, int64_t b,
                int64_t e) {
  if (w.col_idx_16) return wo_generic_impl(a, w, static_cast<const int16_t*>(w.col_idx), out, relu, b, e);
  return wo_generic_impl(a, w, static_cast<const int32_t*>(w.col_idx), out, relu, b, e);
}

#if SQFX_WO_X86
bool wo_avx2(const FloatRows& a, const BsrWeight& w, float* out, bool relu, int64_t b, int64_t e) {
  if (w.col_idx_16) return wo_avx2_impl(a, w, static_cast<const int16_t*>(w.col_idx), out, relu, b, e);
  return wo_avx2_impl(a, w, static_cast<const int32_t*>(w.col_idx), out, relu, b, e);
}
#endif

Tensor qlinear_weight_only(Tensor input, Tensor values, Tensor row_ptr, Tensor col_idx,
                           Tensor w_scale, std::optional<Tensor> bias, int64_t in_features,
                           bool relu) {
  const CheckedPacked p = check_packed(kOp, values, row_ptr, col_idx, w_scale, bias, in_features);
  const BsrWeight w{p.values, p.row_ptr, p.col_idx, p.col_idx_16, p.w_scale, nullptr, p.bias, p.N, p.K,
                    p.row_block, p.col_block, p.n_row_blocks, p.n_col_blocks, p.nnz};
  const int64_t nnz = p.nnz;
  int64_t M = 0;
  Tensor x = check_input(kOp, input, p, &M);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = w.N;
  // The final shape right away: a reshape afterwards would be one more dispatcher call.
  Tensor out = empty_cpu_float(out_shape);
  if (M > 0 && w.N > 0) {
    const float* xp = x.const_data_ptr<float>();
    float* yp = out.mutable_data_ptr<float>();
    // Kernel choice: the table in csrc/kernels/dispatch.cpp (force_isa reaches it).
    const KernelEntry& kernel = select_kernel(Op::kWeightOnly, current_isa(), w, M);
    bool ok;
    if (kernel.call) {
      ok = kernel.call(xp, M, w, relu, yp);
    } else {
      // Row kernels: rows padded to whole blocks, so a last block column that runs past
      // in_features reads zero padding, never past the row.
      const int64_t ld = w.n_col_blocks * w.col_block;
      std::vector<float> padded;
      Rows a{xp, M, w.K};
      if (ld != w.K) {
        padded.assign(static_cast<size_t>(M * ld), 0.0f);
        for (int64_t m = 0; m < M; ++m) std::memcpy(padded.data() + m * ld, xp + m * w.K, sizeof(float) * w.K);
        a = Rows{padded.data(), M, ld};
      }
      std::atomic<bool> good{true};
      const int64_t work_per_rb =
          M * std::max<int64_t>(1, nnz / std::max<int64_t>(1, w.n_row_blocks)) * w.row_block * w.col_block;
      run_range(w.n_row_blocks, work_per_rb, [&](int64_t b, int64_t e) {
        if (!kernel.fp(a, w, yp, relu, b, e)) good.store(false);
      });
      ok = good.load();
    }
    SQFX_CHECK(ok, kOp, ": col_idx holds a block column index outside [0, ", w.n_col_blocks, ")");
    const Rows rows{xp, M, w.K};
    if (w.col_idx_16) {
      propagate_nonfinite(rows, w, static_cast<const int16_t*>(w.col_idx), yp);
    } else {
      propagate_nonfinite(rows, w, static_cast<const int32_t*>(w.col_idx), yp);
    }
  }
  return as_input_dtype(out, input);
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
