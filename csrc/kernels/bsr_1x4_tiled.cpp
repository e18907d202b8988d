// The small-M tiled layout of a 1x4 weight (kernels.h, TiledWeight), derived
// from its BSR form. Portable; the kernels are bsr_1x4_tiled_<isa>.cpp.
//
// Output rows are sorted by their block count (descending, ties by row) and
// cut into tiles of kTiledLanes rows: lane l of a tile is row row_perm[l].
// Each tile is a run of steps; a step gives every lane at most one block, all
// taken from one window of kTiledWindow activation dwords starting at
// step_col. The window is placed greedily at the lowest next block column of
// the tile's lanes (clamped so it stays inside the row), and every lane whose
// next block lies in it takes that block; the others get a zero weight. So a
// lane's blocks are taken in order, each exactly once, and the kernels pick a
// block's activation dword by an in-register permute of the window (no
// gather) and accumulate lane = output row (no reduction).
// Sorting rows by count keeps rows of similar density together: the padding
// (slots with zero weight) is set by the densest lane of a tile. Measured
// slots per stored block (greedy, W = 32 dwords, 16 lanes; 512x4096 masks):
// random 50/80/90%: 1.05 / 1.20 / 1.41; magnitude-pruned with per-row and
// per-column scale spread, 50/80/90%: 1.05 / 1.18 / 1.37 (without the sort:
// 1.70 / 2.71 / 3.59).
#include <algorithm>
#include <cstring>
#include <numeric>

#include "kernels.h"

namespace sqfx {

template <typename Index>
static void build_tiled(const BsrWeight& w, const Index* col_idx, TiledLayout* out) {
  const int64_t N = w.N, ncb = w.n_col_blocks;
  const int64_t n_tiles = (N + kTiledLanes - 1) / kTiledLanes;
  std::vector<int32_t> order(static_cast<size_t>(N));
  std::iota(order.begin(), order.end(), 0);
  auto count = [&](int32_t r) { return w.row_ptr[r + 1] - w.row_ptr[r]; };
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return count(a) > count(b); });
  out->row_perm.assign(static_cast<size_t>(n_tiles * kTiledLanes), -1);
  std::copy(order.begin(), order.end(), out->row_perm.begin());
  out->tile_ptr.assign(1, 0);
  out->step_col.clear();
  out->slot_w.clear();
  out->slot_idx.clear();
  const int64_t last_start = std::max<int64_t>(0, ncb - kTiledWindow);
  for (int64_t t = 0; t < n_tiles; ++t) {
    int64_t next[kTiledLanes], end[kTiledLanes];
    for (int l = 0; l < kTiledLanes; ++l) {
      const int32_t r = out->row_perm[t * kTiledLanes + l];
      next[l] = r < 0 ? 0 : w.row_ptr[r];
      end[l] = r < 0 ? 0 : w.row_ptr[r + 1];
    }
    for (;;) {
      int64_t lowest = ncb;
      for (int l = 0; l < kTiledLanes; ++l)
        if (next[l] < end[l]) lowest = std::min<int64_t>(lowest, static_cast<int64_t>(col_idx[next[l]]));
      if (lowest == ncb) break;
      const int64_t start = std::min(lowest, last_start);
      out->step_col.push_back(static_cast<int32_t>(start));
      const size_t step = out->step_col.size() - 1;
      out->slot_w.resize((step + 1) * 4 * kTiledLanes, 0);
      out->slot_idx.resize((step + 1) * kTiledLanes, 0);
      int8_t* weights = out->slot_w.data() + step * 4 * kTiledLanes;
      uint8_t* local = out->slot_idx.data() + step * kTiledLanes;
      for (int l = 0; l < kTiledLanes; ++l) {
        if (next[l] >= end[l]) continue;
        const int64_t c = static_cast<int64_t>(col_idx[next[l]]);
        if (c >= start + kTiledWindow) continue;
        std::memcpy(weights + 4 * l, w.values + 4 * next[l], 4);
        local[l] = static_cast<uint8_t>(c - start);
        ++next[l];
      }
    }
    out->tile_ptr.push_back(static_cast<int32_t>(out->step_col.size()));
  }
}

void build_tiled_layout(const BsrWeight& w, TiledLayout* out) {
  if (w.col_idx_16) {
    build_tiled(w, static_cast<const int16_t*>(w.col_idx), out);
  } else {
    build_tiled(w, static_cast<const int32_t*>(w.col_idx), out);
  }
}

}  // namespace sqfx
