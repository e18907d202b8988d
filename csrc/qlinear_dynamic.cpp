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
#include "empty_cpu.h"
#include "packed_checks.h"

namespace sqfx {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

Tensor qlinear_dynamic(Tensor input, Tensor values, Tensor row_ptr,
                       Tensor col_idx, Tensor w_scale, Tensor w_sum,
                       std::optional<Tensor> bias, int64_t in_features,
                       bool relu) {
  constexpr const char* op = "sqfx.qlinear_dynamic";
  const CheckedPacked p = check_packed(op, values, row_ptr, col_idx, w_scale, bias, in_features);
  check_tensor(op, w_sum, "w_sum", ScalarType::Int, 1);
  STD_TORCH_CHECK(w_sum.size(0) == p.N, op, ": w_sum has ", w_sum.size(0),
                  " entries, expected out_features = ", p.N);
  // O(N): |w_sum| <= 127 * in_features holds for any int8 weights in [-127, 127]
  // with zero padding. Full consistency is O(nnz * block) and checked on load
  // (validate_packed); this bound is what keeps the zero-point correction
  // zp * w_sum (zp <= 255) inside the exact range the int32 kernels assume, so a
  // tampered w_sum cannot make them wrap around differently from the reference.
  const int64_t w_sum_bound = p.K > INT64_MAX / 127 ? INT64_MAX : 127 * p.K;
  const int32_t* wsum = w_sum.const_data_ptr<int32_t>();
  for (int64_t n = 0; n < p.N; ++n) {
    STD_TORCH_CHECK(std::abs(static_cast<int64_t>(wsum[n])) <= w_sum_bound, op, ": w_sum[", n,
                    "] = ", wsum[n], " cannot be a row sum of int8 weights in [-127, 127] over in_features = ",
                    p.K);
  }
  BsrWeight w{p.values, p.row_ptr, p.col_idx, p.col_idx_16, p.w_scale, wsum, p.bias, p.N, p.K,
              p.row_block, p.col_block, p.n_row_blocks, p.n_col_blocks, p.nnz};
  int64_t M = 0;
  Tensor x = check_input(op, input, p, &M);

  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = w.N;
  Tensor out = empty_cpu_float(out_shape);
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
