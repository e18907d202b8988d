#include "packed_checks.h"

#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/Exception.h>

#include <algorithm>
#include <cmath>

namespace sqfx {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

const char* dtype_name(ScalarType t) {
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

const Tensor& aligned(const Tensor& t, std::vector<Tensor>* copies) {
  // Only 4-byte alignment is relied on; a copy gets the allocator's 64 bytes.
  if (t.numel() == 0 || reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 4 == 0) return t;
  copies->push_back(torch::stable::clone(t));
  return copies->back();
}

// ceil(a / b) for a >= 0, b > 0, without the overflow of (a + b - 1) / b.
static int64_t ceil_div(int64_t a, int64_t b) { return a == 0 ? 0 : 1 + (a - 1) / b; }

void check_tensor(const char* op, const Tensor& t, const char* name, ScalarType dtype, int64_t dim) {
  // torch.ops passes None for a Tensor argument as an undefined tensor.
  SQFX_CHECK(t.defined(), op, ": ", name, " must be a tensor, got None");
  SQFX_CHECK(t.is_cpu(), op, ": ", name, " must be a CPU tensor");
  SQFX_CHECK(t.scalar_type() == dtype, op, ": ", name, " must have dtype ", dtype_name(dtype),
                  ", got ", dtype_name(t.scalar_type()));
  SQFX_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got ", t.dim(), "-D");
  SQFX_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

CheckedPacked check_packed(const char* op, const Tensor& values, const Tensor& row_ptr,
                           const Tensor& col_idx, const Tensor& w_scale,
                           const std::optional<Tensor>& bias, int64_t in_features) {
  check_tensor(op, values, "values", ScalarType::Char, 3);
  check_tensor(op, row_ptr, "row_ptr", ScalarType::Int, 1);
  SQFX_CHECK(col_idx.defined(), op, ": col_idx must be a tensor, got None");
  SQFX_CHECK(col_idx.scalar_type() == ScalarType::Short || col_idx.scalar_type() == ScalarType::Int,
                  op, ": col_idx must be int16 or int32, got ", dtype_name(col_idx.scalar_type()));
  check_tensor(op, col_idx, "col_idx", col_idx.scalar_type(), 1);
  check_tensor(op, w_scale, "w_scale", ScalarType::Float, 1);

  CheckedPacked w{};
  w.N = w_scale.size(0);
  w.K = in_features;
  w.nnz = values.size(0);
  w.row_block = values.size(1);
  w.col_block = values.size(2);
  SQFX_CHECK(w.row_block > 0 && w.col_block > 0, op, ": values has a non-positive block size ",
                  w.row_block, "x", w.col_block);
  SQFX_CHECK(w.K > 0, op, ": in_features must be positive, got ", w.K);
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
  SQFX_CHECK(row_ptr.size(0) == w.n_row_blocks + 1, op, ": row_ptr has ", row_ptr.size(0),
                  " entries, expected ceil(out_features / row_block) + 1 = ", w.n_row_blocks + 1);
  SQFX_CHECK(col_idx.size(0) == w.nnz, op, ": col_idx has ", col_idx.size(0),
                  " entries, values has ", w.nnz, " blocks");
  const int32_t* rp = aligned(row_ptr, &w.copies).const_data_ptr<int32_t>();
  SQFX_CHECK(rp[0] == 0, op, ": row_ptr[0] must be 0, got ", rp[0]);
  for (int64_t i = 0; i < w.n_row_blocks; ++i) {
    SQFX_CHECK(rp[i] <= rp[i + 1], op, ": row_ptr must be non-decreasing, but row_ptr[", i,
                    "] = ", rp[i], " > row_ptr[", i + 1, "] = ", rp[i + 1]);
  }
  SQFX_CHECK(rp[w.n_row_blocks] == w.nnz, op, ": row_ptr[-1] = ", rp[w.n_row_blocks],
                  " must equal the number of blocks ", w.nnz);
  // O(N), negligible next to the kernel: a NaN, infinite, zero or negative
  // scale is never produced by pack() and would poison every output.
  const float* ws = aligned(w_scale, &w.copies).const_data_ptr<float>();
  for (int64_t n = 0; n < w.N; ++n) {
    SQFX_CHECK(std::isfinite(ws[n]) && ws[n] > 0.0f, op,
                    ": w_scale must be finite and positive, but w_scale[", n, "] = ", ws[n]);
  }
  if (bias.has_value()) {
    check_tensor(op, *bias, "bias", ScalarType::Float, 1);
    SQFX_CHECK(bias->size(0) == w.N, op, ": bias has ", bias->size(0),
                    " entries, expected out_features = ", w.N);
    w.bias = aligned(*bias, &w.copies).const_data_ptr<float>();
  }
  w.values = aligned(values, &w.copies).const_data_ptr<int8_t>();
  w.row_ptr = rp;
  w.col_idx_16 = col_idx.scalar_type() == ScalarType::Short;
  w.col_idx = aligned(col_idx, &w.copies).const_data_ptr();
  w.w_scale = ws;
  return w;
}

Tensor check_input(const char* op, const Tensor& input, const CheckedPacked& w, int64_t* rows) {
  SQFX_CHECK(input.defined(), op, ": input must be a tensor, got None");
  SQFX_CHECK(input.is_cpu(), op, ": input must be a CPU tensor");
  const ScalarType dtype = input.scalar_type();
  SQFX_CHECK(dtype == ScalarType::Float || dtype == ScalarType::Half || dtype == ScalarType::BFloat16, op,
             ": input must be float32, float16 or bfloat16, got ", dtype_name(dtype));
  SQFX_CHECK(input.dim() >= 1, op, ": input must have at least 1 dim");
  SQFX_CHECK(input.size(input.dim() - 1) == w.K, op, ": input has ", input.size(input.dim() - 1),
                  " features in its last dim, the layer expects in_features = ", w.K);
  // fp16 / bf16 activations (a model.half() graph): the kernels compute in float32, as the
  // module path does; the op returns the input's dtype (as_input_dtype).
  // Fixed cost matters on small layers: no copy for a contiguous float32 input.
  Tensor x = dtype != ScalarType::Float ? torch::stable::to(input, ScalarType::Float, std::nullopt, std::nullopt,
                                                            std::nullopt, false, false,
                                                            torch::headeronly::MemoryFormat::Contiguous)
             : input.is_contiguous()    ? input
                                        : torch::stable::contiguous(input);
  if (x.numel() > 0 && reinterpret_cast<uintptr_t>(x.const_data_ptr()) % alignof(float) != 0) {
    x = torch::stable::clone(x);  // e.g. torch.frombuffer at an odd byte offset
  }
  const int64_t M = x.numel() / w.K;
  // Kernels pad each row to whole blocks: M * n_col_blocks * col_block elements
  // of scratch. Check it fits (col_block is backed by values' memory).
  int64_t ld = 0, scratch = 0;
  SQFX_CHECK(!__builtin_mul_overflow(w.n_col_blocks, w.col_block, &ld) &&
                      !__builtin_mul_overflow(M, ld, &scratch) &&
                      !__builtin_mul_overflow(scratch, static_cast<int64_t>(sizeof(float)), &scratch),
                  op, ": input rows x padded in_features (", M, " x ", w.n_col_blocks, " x ",
                  w.col_block, ") overflows int64");
  *rows = M;
  return x;
}

Tensor as_input_dtype(const Tensor& out, const Tensor& input) {
  return input.scalar_type() == ScalarType::Float ? out : torch::stable::to(out, input.scalar_type());
}

}  // namespace sqfx
