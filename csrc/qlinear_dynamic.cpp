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

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
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

namespace {

// The optional small-M tiled layout (kernels.h, TiledWeight) of a 1x4 weight:
// O(N + steps) checks of everything the kernels use as an address or a loop
// bound (a vectorized pass over the window starts costs ~1% of a kernel
// call); local indices are masked to 5 bits by the permutes, so no value of
// them reads outside the scratch row. Consistency with values / col_idx is checked on
// load (validate_packed), like col_idx order.
TiledWeight check_tiled(const char* op, const CheckedPacked& p, const std::optional<Tensor>& tile_ptr,
                        const std::optional<Tensor>& step_col, const std::optional<Tensor>& slot_w,
                        const std::optional<Tensor>& slot_idx, const std::optional<Tensor>& row_perm) {
  SQFX_CHECK(tile_ptr.has_value() && step_col.has_value() && slot_w.has_value() && slot_idx.has_value() &&
                      row_perm.has_value(),
                  op, ": the tiled layout needs all of tile_ptr, step_col, slot_w, slot_idx and row_perm");
  SQFX_CHECK(p.row_block == 1 && p.col_block == 4, op,
                  ": a tiled layout is only defined for 1x4 blocks, the weight has ", p.row_block, "x",
                  p.col_block);
  check_tensor(op, *tile_ptr, "tile_ptr", ScalarType::Int, 1);
  check_tensor(op, *step_col, "step_col", ScalarType::Int, 1);
  check_tensor(op, *slot_w, "slot_w", ScalarType::Char, 2);
  check_tensor(op, *slot_idx, "slot_idx", ScalarType::Byte, 2);
  check_tensor(op, *row_perm, "row_perm", ScalarType::Int, 1);
  TiledWeight t{};
  t.n_tiles = (p.N + kTiledLanes - 1) / kTiledLanes;
  t.n_steps = step_col->size(0);
  SQFX_CHECK(tile_ptr->size(0) == t.n_tiles + 1, op, ": tile_ptr has ", tile_ptr->size(0),
                  " entries, expected ceil(out_features / ", kTiledLanes, ") + 1 = ", t.n_tiles + 1);
  SQFX_CHECK(slot_w->size(0) == t.n_steps && slot_w->size(1) == 4 * kTiledLanes, op,
                  ": slot_w must be [", t.n_steps, ", ", 4 * kTiledLanes, "] (one row per step), got [",
                  slot_w->size(0), ", ", slot_w->size(1), "]");
  SQFX_CHECK(slot_idx->size(0) == t.n_steps && slot_idx->size(1) == kTiledLanes, op,
                  ": slot_idx must be [", t.n_steps, ", ", kTiledLanes, "] (one row per step), got [",
                  slot_idx->size(0), ", ", slot_idx->size(1), "]");
  SQFX_CHECK(row_perm->size(0) == t.n_tiles * kTiledLanes, op, ": row_perm has ", row_perm->size(0),
                  " entries, expected ", t.n_tiles * kTiledLanes);
  // The loops below accumulate flags instead of checking each entry, so they
  // vectorize: this is per-call cost.
  const int32_t* tp = tile_ptr->const_data_ptr<int32_t>();
  bool monotone = tp[0] == 0;
  for (int64_t i = 0; i < t.n_tiles; ++i) monotone &= tp[i] <= tp[i + 1];
  SQFX_CHECK(monotone, op, ": tile_ptr must start at 0 and be non-decreasing");
  SQFX_CHECK(tp[t.n_tiles] == t.n_steps, op, ": tile_ptr[-1] = ", tp[t.n_tiles],
                  " must equal the number of steps ", t.n_steps);
  // Lanes name output rows in [0, N) or -1, N of them. That a row is named
  // exactly once is checked on load (validate_tiled, O(N) with a bitmap, too
  // slow per call): a repeated row here only leaves another row's outputs at
  // the zeros the op fills them with first, a wrong but defined result.
  const int32_t* perm = row_perm->const_data_ptr<int32_t>();
  bool in_range = true;
  int64_t lanes_used = 0;
  for (int64_t i = 0; i < t.n_tiles * kTiledLanes; ++i) {
    in_range &= perm[i] >= -1 && perm[i] < p.N;
    lanes_used += perm[i] >= 0;
  }
  SQFX_CHECK(in_range && lanes_used == p.N, op, ": row_perm must name each of the ", p.N,
                  " output rows once (-1 for unused lanes)");
  // Window starts in [0, max(0, n_col_blocks - kTiledWindow)]: the scratch rows
  // hold kTiledWindow dwords past any of them. One unsigned compare each
  // (negative reads as huge), no early exit: the loop vectorizes.
  const int32_t* cols = step_col->const_data_ptr<int32_t>();
  const uint32_t last = static_cast<uint32_t>(std::max<int64_t>(0, p.n_col_blocks - kTiledWindow));
  // (an OR of compares: this file is built for baseline x86-64, which has no unsigned max)
  int32_t outside = 0;
  for (int64_t s = 0; s < t.n_steps; ++s) outside |= static_cast<uint32_t>(cols[s]) > last;
  SQFX_CHECK(!outside, op, ": step_col holds a window start outside [0, ", last, "]");
  t.tile_ptr = tp;
  t.step_col = cols;
  t.slot_w = slot_w->const_data_ptr<int8_t>();
  t.slot_idx = slot_idx->const_data_ptr<uint8_t>();
  t.row_perm = perm;
  return t;
}

}  // namespace

Tensor qlinear_dynamic(Tensor input, Tensor values, Tensor row_ptr,
                       Tensor col_idx, Tensor w_scale, Tensor w_sum,
                       std::optional<Tensor> bias, int64_t in_features,
                       bool relu, std::optional<Tensor> tile_ptr, std::optional<Tensor> step_col,
                       std::optional<Tensor> slot_w, std::optional<Tensor> slot_idx,
                       std::optional<Tensor> row_perm) {
  constexpr const char* op = "sqfx.qlinear_dynamic";
  CheckedPacked p = check_packed(op, values, row_ptr, col_idx, w_scale, bias, in_features);
  check_tensor(op, w_sum, "w_sum", ScalarType::Int, 1);
  SQFX_CHECK(w_sum.size(0) == p.N, op, ": w_sum has ", w_sum.size(0),
                  " entries, expected out_features = ", p.N);
  // O(N): |w_sum| <= 127 * in_features holds for any int8 weights in [-127, 127]
  // with zero padding. Full consistency is O(nnz * block) and checked on load
  // (validate_packed); this bound is what keeps the zero-point correction
  // zp * w_sum (zp <= 255) inside the exact range the int32 kernels assume, so a
  // tampered w_sum cannot make them wrap around differently from the reference.
  const int64_t w_sum_bound = p.K > INT64_MAX / 127 ? INT64_MAX : 127 * p.K;
  const int32_t* wsum = aligned(w_sum, &p.copies).const_data_ptr<int32_t>();
  for (int64_t n = 0; n < p.N; ++n) {
    SQFX_CHECK(std::abs(static_cast<int64_t>(wsum[n])) <= w_sum_bound, op, ": w_sum[", n,
                    "] = ", wsum[n], " cannot be a row sum of int8 weights in [-127, 127] over in_features = ",
                    p.K);
  }
  BsrWeight w{p.values, p.row_ptr, p.col_idx, p.col_idx_16, p.w_scale, wsum, p.bias, p.N, p.K,
              p.row_block, p.col_block, p.n_row_blocks, p.n_col_blocks, p.nnz};
  TiledWeight tiled{};
  if (tile_ptr.has_value() || step_col.has_value() || slot_w.has_value() || slot_idx.has_value() ||
      row_perm.has_value()) {
    tiled = check_tiled(op, p, tile_ptr, step_col, slot_w, slot_idx, row_perm);
    w.tiled = &tiled;
  }
  int64_t M = 0;
  Tensor x = check_input(op, input, p, &M);

  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = w.N;
  Tensor out = empty_cpu_float(out_shape);
  // Kernel choice, threads and scratch: csrc/kernels/dispatch.cpp (which zero-fills the
  // output first where the tiled kernels run: see check_tiled).
  run_qlinear(x.const_data_ptr<float>(), M, w, relu, out.mutable_data_ptr<float>());
  return as_input_dtype(out, input);
}

// Test hooks: which ISA paths this CPU can run, and forcing one of them.
std::vector<std::string> kernel_isas() {
  int count = 0;
  const char* const* names = available_isas(&count);
  return std::vector<std::string>(names, names + count);
}

std::string active_kernel_isa() { return active_isa_name(); }

// The name of the kernel the op `op` ("qlinear_dynamic" / "qlinear_weight_only")
// would run for this packed weight and M input rows now (the table in
// csrc/kernels/dispatch.cpp, under the current or forced ISA).
std::string kernel_for(std::string op, Tensor values, Tensor row_ptr, Tensor col_idx,
                       Tensor w_scale, int64_t in_features, int64_t M, bool tiled) {
  Op kind = Op::kDynamic;
  if (op == "qlinear_weight_only") {
    kind = Op::kWeightOnly;
  } else {
    SQFX_CHECK(op == "qlinear_dynamic", "sqfx._kernel_for: op must be 'qlinear_dynamic' or ",
                    "'qlinear_weight_only', got '", op, "'");
  }
  SQFX_CHECK(M >= 0, "sqfx._kernel_for: M must be >= 0, got ", M);
  const CheckedPacked p =
      check_packed("sqfx._kernel_for", values, row_ptr, col_idx, w_scale, std::nullopt, in_features);
  BsrWeight w{p.values, p.row_ptr, p.col_idx, p.col_idx_16, p.w_scale, nullptr, p.bias, p.N, p.K,
              p.row_block, p.col_block, p.n_row_blocks, p.n_col_blocks, p.nnz};
  const TiledWeight present{};  // only its presence matters for the choice
  if (tiled && kind == Op::kDynamic && p.row_block == 1 && p.col_block == 4) w.tiled = &present;
  return select_kernel(kind, current_isa(), w, M).name;
}

// The small-M tiled layout of a 1x4 weight (kernels.h, TiledWeight), derived
// from its BSR tensors: [tile_ptr, step_col, slot_w, slot_idx, row_perm].
std::vector<Tensor> pack_tiled(Tensor values, Tensor row_ptr, Tensor col_idx, Tensor w_scale,
                               int64_t in_features) {
  constexpr const char* op = "sqfx._pack_tiled";
  const CheckedPacked p = check_packed(op, values, row_ptr, col_idx, w_scale, std::nullopt, in_features);
  SQFX_CHECK(p.row_block == 1 && p.col_block == 4, op, ": the tiled layout is for 1x4 blocks, got ",
                  p.row_block, "x", p.col_block);
  // O(nnz): block columns in range and strictly increasing per row (the greedy
  // tiling takes each row's blocks in column order).
  for (int64_t r = 0; r < p.N; ++r) {
    int64_t prev = -1;
    for (int64_t j = p.row_ptr[r]; j < p.row_ptr[r + 1]; ++j) {
      const int64_t c = p.col_idx_16 ? static_cast<const int16_t*>(p.col_idx)[j]
                                     : static_cast<const int32_t*>(p.col_idx)[j];
      SQFX_CHECK(c > prev && c < p.n_col_blocks, op, ": col_idx must be increasing within each row ",
                      "and in [0, ", p.n_col_blocks, "), got ", c, " at block ", j);
      prev = c;
    }
  }
  BsrWeight w{p.values, p.row_ptr, p.col_idx, p.col_idx_16, p.w_scale, nullptr, p.bias, p.N, p.K,
              p.row_block, p.col_block, p.n_row_blocks, p.n_col_blocks, p.nnz};
  TiledLayout layout;
  build_tiled_layout(w, &layout);
  auto from = [](const auto& v, std::vector<int64_t> shape, ScalarType dtype) {
    Tensor t = torch::stable::empty(shape, dtype);
    if (!v.empty()) std::memcpy(t.mutable_data_ptr(), v.data(), v.size() * sizeof(v[0]));
    return t;
  };
  const int64_t steps = static_cast<int64_t>(layout.step_col.size());
  return {from(layout.tile_ptr, {static_cast<int64_t>(layout.tile_ptr.size())}, ScalarType::Int),
          from(layout.step_col, {steps}, ScalarType::Int),
          from(layout.slot_w, {steps, 4 * kTiledLanes}, ScalarType::Char),
          from(layout.slot_idx, {steps, kTiledLanes}, ScalarType::Byte),
          from(layout.row_perm, {static_cast<int64_t>(layout.row_perm.size())}, ScalarType::Int)};
}

// The M at which some table row starts, ascending: where the choice can change.
std::vector<int64_t> kernel_m_breaks() {
  int count = 0;
  const KernelEntry* table = kernel_table(&count);
  std::vector<int64_t> breaks;
  for (int i = 0; i < count; ++i) {
    breaks.push_back(table[i].m_min);
    if (table[i].m_max < INT64_MAX) breaks.push_back(table[i].m_max + 1);
  }
  std::sort(breaks.begin(), breaks.end());
  breaks.erase(std::unique(breaks.begin(), breaks.end()), breaks.end());
  return breaks;
}

// Every kernel of the table, in search order, once each (one kernel may serve several rows,
// e.g. M ranges that differ by CPU feature or in_features) (docs, tests).
std::vector<std::string> kernel_names() {
  int count = 0;
  const KernelEntry* table = kernel_table(&count);
  std::vector<std::string> names;
  for (int i = 0; i < count; ++i)
    if (std::find(names.begin(), names.end(), table[i].name) == names.end()) names.emplace_back(table[i].name);
  return names;
}

std::string set_kernel_isa(std::string isa) {
  SQFX_CHECK(force_isa(isa.c_str()), "sqfx: kernel ISA '", isa,
                  "' is not available on this CPU (use 'auto' or one of sqfx.ops.available_isas())");
  return active_isa_name();
}


}  // namespace sqfx

STABLE_TORCH_LIBRARY(sqfx, m) {
  m.def(
      "qlinear_dynamic(Tensor input, Tensor values, Tensor row_ptr, Tensor col_idx, "
      "Tensor w_scale, Tensor w_sum, Tensor? bias, int in_features, bool relu, "
      "Tensor? tile_ptr=None, Tensor? step_col=None, Tensor? slot_w=None, Tensor? slot_idx=None, "
      "Tensor? row_perm=None) -> Tensor");
  m.def("_pack_tiled(Tensor values, Tensor row_ptr, Tensor col_idx, Tensor w_scale, int in_features) "
        "-> Tensor[]");
  m.def("_kernel_isas() -> str[]");
  m.def("_set_kernel_isa(str isa) -> str");
  m.def("_active_kernel_isa() -> str");
  m.def("_kernel_for(str op, Tensor values, Tensor row_ptr, Tensor col_idx, Tensor w_scale, "
        "int in_features, int M, bool tiled=False) -> str");
  m.def("_kernel_names() -> str[]");
  m.def("_kernel_m_breaks() -> int[]");
}

STABLE_TORCH_LIBRARY_IMPL(sqfx, CPU, m) {
  m.impl("qlinear_dynamic", TORCH_BOX(&sqfx::qlinear_dynamic));
}

STABLE_TORCH_LIBRARY_IMPL(sqfx, CompositeExplicitAutograd, m) {
  m.impl("_kernel_isas", TORCH_BOX(&sqfx::kernel_isas));
  m.impl("_set_kernel_isa", TORCH_BOX(&sqfx::set_kernel_isa));
  m.impl("_active_kernel_isa", TORCH_BOX(&sqfx::active_kernel_isa));
  m.impl("_kernel_for", TORCH_BOX(&sqfx::kernel_for));
  m.impl("_kernel_names", TORCH_BOX(&sqfx::kernel_names));
  m.impl("_pack_tiled", TORCH_BOX(&sqfx::pack_tiled));
  m.impl("_kernel_m_breaks", TORCH_BOX(&sqfx::kernel_m_breaks));
}
