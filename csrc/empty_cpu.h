// A new contiguous fp32 CPU tensor for an op's output, through the C shim's
// aoti_torch_empty_strided: torch::stable::empty goes through torch_call_dispatcher,
// which looks the operator up by name (a lock and a hash lookup) on every call, a
// measurable part of a small layer's fixed cost.
#pragma once
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

#include "check.h"

#include <cstdint>
#include <vector>

namespace sqfx {

inline torch::stable::Tensor empty_cpu_float(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> strides(sizes.size());
  int64_t stride = 1;
  for (size_t d = sizes.size(); d-- > 0;) {
    strides[d] = stride;
    stride *= sizes[d] > 1 ? sizes[d] : 1;
  }
  AtenTensorHandle handle = nullptr;
  SQFX_CHECK(aoti_torch_empty_strided(static_cast<int64_t>(sizes.size()), sizes.data(), strides.data(),
                                           aoti_torch_dtype_float32(), aoti_torch_device_type_cpu(), 0,
                                           &handle) == AOTI_TORCH_SUCCESS,
                  "sqfx: allocating the output failed");
  return torch::stable::Tensor(handle);
}

}  // namespace sqfx
