// sqfx::qlinear_dynamic: fp32 in, fp32 out, int8 block-sparse weights held as
// plain tensors, activations quantized per row on the fly. Built against the
// LibTorch stable ABI so one binary serves several torch releases.
//
// Every tensor is checked before its memory is touched: dtypes, devices,
// ranks, lengths and the row pointers (O(row blocks)); block column indices
// are range-checked inside the kernel as they are read.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "kernels/kernels.h"

namespace sqfx {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

// The torch spelling of a dtype, for error messages.
static const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Char: return "torch.int8";
    case ScalarType::Byte: return "torch.uint8";
    case ScalarType::Short: return "torch.int16";
    case ScalarType::Int: return "torch.int32";
    case ScalarType::Long: return "torch.int64";
    case ScalarType::Half: return "torch.float16";
    case ScalarType::BFloat16: return "torch.bfloat16";
    case ScalarType::Float: return "torch.float32";
    case ScalarType::Double: return "torch.float64";
    case ScalarType::Bool: return "torch.bool";
    default: return torch::headeronly::toString(t);
  }
}

// ceil(a / b) for a >= 0, b > 0, without the overflow of (a + b - 1) / b.
static int64_t ceil_div(int64_t a, int64_t b) { return a == 0 ? 0 : 1 + (a - 1) / b; }

static void check_tensor(const Tensor& t, const char* name, ScalarType dtype,
                         int64_t dim) {
  // torch.ops passes None for a Tensor argument as an undefined tensor.
  STD_TORCH_CHECK(t.defined(), "sqfx.qlinear_dynamic: ", name, " must be a tensor, got None");
  STD_TORCH_CHECK(t.is_cpu(), "sqfx.qlinear_dynamic: ", name,
                  " must be a CPU tensor");
  STD_TORCH_CHECK(t.scalar_type() == dtype, "sqfx.qlinear_dynamic: ", name,
                  " must have dtype ", dtype_name(dtype),
                  ", got ", dtype_name(t.scalar_type()));
  STD_TORCH_CHECK(t.dim() == dim, "sqfx.qlinear_dynamic: ", name, " must be ",
                  dim, "-D, got ", t.dim(), "-D");
  STD_TORCH_CHECK(t.is_contiguous(), "sqfx.qlinear_dynamic: ", name,
                  " must be contiguous");
}

Tensor qlinear_dynamic(Tensor input, Tensor values, Tensor row_ptr,
                       Tensor col_idx, Tensor w_scale, Tensor w_sum,
                       std::optional<Tensor> bias, int64_t in_features,
                       bool relu) {
  // ---- packed weight ----
  check_tensor(values, "values", ScalarType::Char, 3);
  check_tensor(row_ptr, "row_ptr", ScalarType::Int, 1);
  STD_TORCH_CHECK(col_idx.defined(), "sqfx.qlinear_dynamic: col_idx must be a tensor, got None");
  STD_TORCH_CHECK(col_idx.scalar_type() == ScalarType::Short ||
                      col_idx.scalar_type() == ScalarType::Int,
                  "sqfx.qlinear_dynamic: col_idx must be int16 or int32, got ",
                  dtype_name(col_idx.scalar_type()));
  check_tensor(col_idx, "col_idx", col_idx.scalar_type(), 1);
  check_tensor(w_scale, "w_scale", ScalarType::Float, 1);
  check_tensor(w_sum, "w_sum", ScalarType::Int, 1);

  BsrWeight w{};
  w.N = w_scale.size(0);
  w.K = in_features;
  w.nnz = values.size(0);
  w.row_block = values.size(1);
  w.col_block = values.size(2);
  STD_TORCH_CHECK(w.row_block > 0 && w.col_block > 0,
                  "sqfx.qlinear_dynamic: values has a non-positive block size ",
                  w.row_block, "x", w.col_block);
  STD_TORCH_CHECK(w.K > 0, "sqfx.qlinear_dynamic: in_features must be positive, got ", w.K);
  if (w.nnz == 0) {
    // No stored block: the block shape is backed by no memory (values is empty)
    // and only fixes the length of row_ptr. Clamp it to the layer so that no
    // scratch buffer scales with an arbitrary, unbacked block size.
    if (w.row_block > w.N) w.row_block = std::max<int64_t>(w.N, 1);
    if (w.col_block > w.K) w.col_block = w.K;
  }
  // Overflow-free ceil division (sizes may be near INT64_MAX in a crafted call).
  w.n_row_blocks = ceil_div(w.N, w.row_block);
  w.n_col_blocks = ceil_div(w.K, w.col_block);
  STD_TORCH_CHECK(w_sum.size(0) == w.N, "sqfx.qlinear_dynamic: w_sum has ",
                  w_sum.size(0), " entries, expected out_features = ", w.N);
  STD_TORCH_CHECK(row_ptr.size(0) == w.n_row_blocks + 1,
                  "sqfx.qlinear_dynamic: row_ptr has ", row_ptr.size(0),
                  " entries, expected ceil(out_features / row_block) + 1 = ",
                  w.n_row_blocks + 1);
  STD_TORCH_CHECK(col_idx.size(0) == w.nnz, "sqfx.qlinear_dynamic: col_idx has ",
                  col_idx.size(0), " entries, values has ", w.nnz, " blocks");
  const int32_t* rp = row_ptr.const_data_ptr<int32_t>();
  STD_TORCH_CHECK(rp[0] == 0, "sqfx.qlinear_dynamic: row_ptr[0] must be 0, got ", rp[0]);
  for (int64_t i = 0; i < w.n_row_blocks; ++i) {
    STD_TORCH_CHECK(rp[i] <= rp[i + 1],
                    "sqfx.qlinear_dynamic: row_ptr must be non-decreasing, but row_ptr[",
                    i, "] = ", rp[i], " > row_ptr[", i + 1, "] = ", rp[i + 1]);
  }
  STD_TORCH_CHECK(rp[w.n_row_blocks] == w.nnz,
                  "sqfx.qlinear_dynamic: row_ptr[-1] = ", rp[w.n_row_blocks],
                  " must equal the number of blocks ", w.nnz);
  // O(N), negligible next to the kernel: a NaN, infinite, zero or negative
  // scale is never produced by pack() and would poison every output.
  const float* ws = w_scale.const_data_ptr<float>();
  for (int64_t n = 0; n < w.N; ++n) {
    STD_TORCH_CHECK(std::isfinite(ws[n]) && ws[n] > 0.0f,
                    "sqfx.qlinear_dynamic: w_scale must be finite and positive, but w_scale[",
                    n, "] = ", ws[n]);
  }
  // O(N): |w_sum| <= 127 * in_features holds for any int8 weights in [-127, 127]
  // with zero padding. Full consistency is O(nnz * block) and checked on load
  // (validate_packed); this bound is what keeps the zero-point correction
  // zp * w_sum (zp <= 255) inside the exact range the int32 kernels assume, so a
  // tampered w_sum cannot make them wrap around differently from the reference.
  const int64_t w_sum_bound = w.K > INT64_MAX / 127 ? INT64_MAX : 127 * w.K;
  const int32_t* wsum = w_sum.const_data_ptr<int32_t>();
  for (int64_t n = 0; n < w.N; ++n) {
    STD_TORCH_CHECK(std::abs(static_cast<int64_t>(wsum[n])) <= w_sum_bound,
                    "sqfx.qlinear_dynamic: w_sum[", n, "] = ", wsum[n],
                    " cannot be a row sum of int8 weights in [-127, 127] over in_features = ", w.K);
  }
  if (bias.has_value()) {
    check_tensor(*bias, "bias", ScalarType::Float, 1);
    STD_TORCH_CHECK(bias->size(0) == w.N, "sqfx.qlinear_dynamic: bias has ",
                    bias->size(0), " entries, expected out_features = ", w.N);
    w.bias = bias->const_data_ptr<float>();
  }
  w.values = values.const_data_ptr<int8_t>();
  w.row_ptr = rp;
  w.col_idx_16 = col_idx.scalar_type() == ScalarType::Short;
  w.col_idx = col_idx.const_data_ptr();
  w.w_scale = w_scale.const_data_ptr<float>();
  w.w_sum = w_sum.const_data_ptr<int32_t>();

  // ---- input ----
  STD_TORCH_CHECK(input.defined(), "sqfx.qlinear_dynamic: input must be a tensor, got None");
  STD_TORCH_CHECK(input.is_cpu(), "sqfx.qlinear_dynamic: input must be a CPU tensor");
  STD_TORCH_CHECK(input.scalar_type() == ScalarType::Float,
                  "sqfx.qlinear_dynamic: input must be float32, got ",
                  dtype_name(input.scalar_type()));
  STD_TORCH_CHECK(input.dim() >= 1, "sqfx.qlinear_dynamic: input must have at least 1 dim");
  STD_TORCH_CHECK(input.size(input.dim() - 1) == w.K,
                  "sqfx.qlinear_dynamic: input has ", input.size(input.dim() - 1),
                  " features in its last dim, the layer expects in_features = ", w.K);
  // Fixed cost matters on small layers: no copy for a contiguous input, the
  // output is created in its final shape (no reshape call).
  Tensor x = input.is_contiguous() ? input : torch::stable::contiguous(input);
  const int64_t M = w.K > 0 ? x.numel() / w.K : 0;
  // The quantized activations are padded to whole blocks: M * n_col_blocks *
  // col_block bytes. Check it fits (col_block is backed by values' memory).
  {
    int64_t ld = 0, scratch = 0;
    STD_TORCH_CHECK(!__builtin_mul_overflow(w.n_col_blocks, w.col_block, &ld) &&
                        !__builtin_mul_overflow(M, ld, &scratch),
                    "sqfx.qlinear_dynamic: input rows x padded in_features (", M, " x ",
                    w.n_col_blocks, " x ", w.col_block, ") overflows int64");
  }

  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = w.N;
  Tensor out = torch::stable::empty(out_shape, ScalarType::Float);
  // Kernel choice, threads and scratch: csrc/kernels/dispatch.cpp.
  run_qlinear(x.const_data_ptr<float>(), M, w, relu, out.mutable_data_ptr<float>());
  return out;
}

// Test hooks: which ISA paths this CPU can run, and forcing one of them.
std::vector<std::string> kernel_isas() {
  int count = 0;
  const char* const* names = available_isas(&count);
  return std::vector<std::string>(names, names + count);
}

std::string active_kernel_isa() { return active_isa_name(); }

std::string set_kernel_isa(std::string isa) {
  STD_TORCH_CHECK(force_isa(isa.c_str()), "sqfx: kernel ISA '", isa,
                  "' is not available on this CPU (use 'auto' or one of sqfx.ops.available_isas())");
  return active_isa_name();
}


}  // namespace sqfx

STABLE_TORCH_LIBRARY(sqfx, m) {
  m.def(
      "qlinear_dynamic(Tensor input, Tensor values, Tensor row_ptr, Tensor col_idx, "
      "Tensor w_scale, Tensor w_sum, Tensor? bias, int in_features, bool relu) -> Tensor");
  m.def("_kernel_isas() -> str[]");
  m.def("_set_kernel_isa(str isa) -> str");
  m.def("_active_kernel_isa() -> str");
}

STABLE_TORCH_LIBRARY_IMPL(sqfx, CPU, m) {
  m.impl("qlinear_dynamic", TORCH_BOX(&sqfx::qlinear_dynamic));
}

STABLE_TORCH_LIBRARY_IMPL(sqfx, CompositeExplicitAutograd, m) {
  m.impl("_kernel_isas", TORCH_BOX(&sqfx::kernel_isas));
  m.impl("_set_kernel_isa", TORCH_BOX(&sqfx::set_kernel_isa));
  m.impl("_active_kernel_isa", TORCH_BOX(&sqfx::active_kernel_isa));
}
