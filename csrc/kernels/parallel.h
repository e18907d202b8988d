// The one threading rule of both ops' drivers, and the grow-only scratch helper.
#pragma once
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace sqfx {

// Calls with fewer multiply-adds run on the calling thread: no thread-pool hand-off.
constexpr int64_t kMinParallelWork = 1 << 17;

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

// Scratch that only grows: no allocation per call once warm.
template <typename T>
T* grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

}  // namespace sqfx
