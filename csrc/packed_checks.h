// Validation shared by the sqfx ops: every packed tensor and the input are
// checked here before any kernel touches their memory. O(row blocks + N):
// dtypes, devices, ranks, contiguity, lengths, row pointers, scales. Block
// column indices are range-checked by the kernels as they read them.
#pragma once
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "check.h"

namespace sqfx {

// The packed weight after validation, as plain pointers and sizes.
struct CheckedPacked {
  const int8_t* values;
  const int32_t* row_ptr;
  const void* col_idx;
  bool col_idx_16;
  const float* w_scale;
  const float* bias;  // or nullptr
  int64_t N, K, nnz;
  int64_t row_block, col_block, n_row_blocks, n_col_blocks;
  // Aligned copies of tensors that were not (see aligned()); the pointers above may
  // point into them, so a CheckedPacked must outlive the kernel call.
  std::vector<torch::stable::Tensor> copies;
};

// The kernels load int32 / float words and 4-byte groups of int8 weights straight
// from the tensors' memory. A crafted file can start a tensor at any byte (an int8
// record with storage_offset 1): such a tensor is copied to fresh memory, aligned
// to kAlignment, and the copy kept in *copies. Tensors sqfx makes never need it.
constexpr uintptr_t kAlignment = 64;
const torch::stable::Tensor& aligned(const torch::stable::Tensor& t,
                                     std::vector<torch::stable::Tensor>* copies);

// The torch spelling of a dtype ("torch.int8"), for error messages.
const char* dtype_name(torch::headeronly::ScalarType t);

void check_tensor(const char* op, const torch::stable::Tensor& t, const char* name,
                  torch::headeronly::ScalarType dtype, int64_t dim);

CheckedPacked check_packed(const char* op, const torch::stable::Tensor& values,
                           const torch::stable::Tensor& row_ptr,
                           const torch::stable::Tensor& col_idx,
                           const torch::stable::Tensor& w_scale,
                           const std::optional<torch::stable::Tensor>& bias, int64_t in_features);

// Checks the input against the layer and returns it as contiguous, aligned float32 (no
// copy when it already is); *rows = the number of rows of the flattened [rows, K] input.
// float16 / bfloat16 inputs are accepted (converted to float32 here).
torch::stable::Tensor check_input(const char* op, const torch::stable::Tensor& input,
                                  const CheckedPacked& w, int64_t* rows);

// The op's float32 result in the input's dtype (float16 / bfloat16 inputs get theirs back).
torch::stable::Tensor as_input_dtype(const torch::stable::Tensor& out, const torch::stable::Tensor& input);

}  // namespace sqfx
