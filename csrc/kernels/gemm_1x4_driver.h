// Token-batch sparse GEMM for 1x4 blocks, shared by the ISA files
// (gemm_1x4_64x1_avx512vnni.cpp, gemm_1x4_32x1_avx2.cpp). Not a normal header:
// each includes it inside its own anonymous namespace after defining
// SQFX_GEMM_TARGET (the target attribute, so the micro kernel inlines).
//
// Activations: the panel layout (PanelRows), quantized once per call. Work:
// one chunk of rows, output rows [rb_begin, rb_end). Loops, outermost first:
//  * passes of Micro::kUnitRows * U input rows (the register tile: U vectors);
//  * blocks of kGemmRowsN output rows (their accumulators wait in a small
//    buffer between K tiles);
//  * K tiles of ktg column groups, sized so that the pass's slice of the panel
//    (ktg * pass rows * 4 bytes) stays in cache (L2, see kGemmL1Bytes) while
//    every output row of the block reads its blocks in that tile;
//  * output rows n: for each 1x4 block in the tile, the weight dword is
//    broadcast and multiplies the pass's rows (U vector loads, U dot steps).
// A row's blocks are consumed through a cursor: tile t takes blocks while
// their column is below the tile's end, the last tile takes the rest with a
// range check. So every block is used exactly once even if a row's columns
// are not sorted (then only locality suffers), and a bad column (negative, or
// >= n_col_blocks) always reaches the last tile's check and is never read.
//
// Micro (per ISA) provides kUnitRows, kMaxUnits, Acc<U>, and static
// zero / load / store / step / finish, and act_panel: the chunk's activations
// as step() reads them, kActBytes (1 or 2) bytes each (AVX2: the int16 copy of
// x86::widened_chunk, panel_i16_avx2.h, as its exact product takes int16).
#ifndef SQFX_GEMM_TARGET
#error "define SQFX_GEMM_TARGET before including gemm_1x4_driver.h"
#endif

// Panel slice per K tile. Measured on Zen4 (4096x4096, 90%, M=512, CPU time):
// 16-24 KiB tiles (L1) were 1.5-1.7x slower than one tile for the whole K --
// the per-(row, tile) restart (accumulators out and in, the cursor loop's
// exit) costs more than the L1 hits gain at ~6 blocks per row and tile --
// and 128-256 KiB tiles (L2) were as fast as one tile. So the K tiles are
// L2-sized: the panel slice stays in L2 while a block of output rows reads it.
constexpr int64_t kGemmL1Bytes = 128 * 1024;
constexpr int64_t kGemmRowsN = 256;  // output rows per accumulator block

// The finished outputs of up to kTileN output rows wait in a tile T[n][m]
// (one vector store per finish); this writes them to out[m][n] through
// Micro::kTr x kTr register transposes (scalar copies at the edges).
// (Non-temporal stores here made the op alone 1.5-2.5x faster at M = 2048 with outputs of
// 12-25 MB, and MiniLM end to end 0-20% slower: the next op then reads its input from DRAM
// instead of L3. So the output goes through the cache.)
template <class Micro>
SQFX_GEMM_TARGET void flush_transposed(const float* tile, int64_t ldt, int64_t rows, int64_t n_tile,
                                       int64_t count, int64_t N, float* out_m) {
  constexpr int64_t B = Micro::kTr;
  for (int64_t r0 = 0; r0 < rows; r0 += B) {
    const int64_t nr = std::min(B, rows - r0);
    int64_t c0 = 0;
    if (nr == B)
      for (; c0 + B <= count; c0 += B)
        Micro::transpose(tile + c0 * ldt + r0, ldt, out_m + r0 * N + n_tile + c0, N);
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t c = c0; c < count; ++c) out_m[(r0 + r) * N + n_tile + c] = tile[c * ldt + r0 + r];
  }
}

template <class Micro, typename Index, int U>
SQFX_GEMM_TARGET bool gemm_pass(const PanelRows& a, const uint8_t* panel, int64_t m0, int64_t ms,
                                int64_t rows, const BsrWeight& w, const Index* col_idx, float* out,
                                bool relu, int64_t rb_begin, int64_t rb_end, int32_t* acc_buf,
                                int64_t* cursor, float* tile) {
  using Acc = typename Micro::template Acc<U>;
  constexpr int64_t kAccInts = sizeof(Acc) / sizeof(int32_t);
  constexpr int64_t act = Micro::kActBytes;
  const int64_t stride = a.mc * 4 * act;  // bytes per column group
  const int64_t pass_rows = std::min<int64_t>(rows - ms, Micro::kUnitRows * U);
  const int64_t ktg = std::max<int64_t>(1, kGemmL1Bytes / (Micro::kUnitRows * U * 4 * act));
  const int64_t n_tiles = (w.n_col_blocks + ktg - 1) / ktg;
  const int32_t* wd = reinterpret_cast<const int32_t*>(w.values);
  const uint8_t* base = panel + ms * 4 * act;
  constexpr int64_t ldt = Micro::kUnitRows * Micro::kMaxUnits;  // tile row length
  float* out_m = out + (m0 + ms) * w.N;
  // Local copies: the per-row epilogue scalars are read through these, not through
  // w, which every vector store would force the compiler to re-read (x86::OutRow).
  const int32_t* const w_sum = w.w_sum;
  const float* const w_scale = w.w_scale;
  const float* const bias = w.bias;
  const int32_t* const row_ptr = w.row_ptr;
  const int64_t n_col_blocks = w.n_col_blocks, N = w.N;
  const int32_t* const zp = a.zp + m0 + ms;
  const float* const a_scale = a.scale + m0 + ms;
  bool ok = true;
  for (int64_t nb0 = rb_begin; nb0 < rb_end; nb0 += kGemmRowsN) {
    const int64_t nb1 = std::min(rb_end, nb0 + kGemmRowsN);
    for (int64_t n = nb0; n < nb1; ++n) cursor[n - nb0] = row_ptr[n];
    for (int64_t t = 0; t < n_tiles; ++t) {
      const bool first = t == 0, last = t == n_tiles - 1;
      const uint32_t lim = static_cast<uint32_t>((t + 1) * ktg);
      int64_t n_tile = nb0;
      for (int64_t n = nb0; n < nb1; ++n) {
        // Two accumulator sets (even / odd blocks) keep twice the dot chains in
        // flight where the registers allow (Micro::kTwoSets: not on AVX2's 16 ymm).
        Acc acc, acc2;
        int32_t* saved = acc_buf + (n - nb0) * kAccInts;
        if (first) {
          Micro::zero(acc);
        } else {
          Micro::load(acc, saved);
        }
        Micro::zero(acc2);
        int64_t j = cursor[n - nb0];
        const int64_t je = row_ptr[n + 1];
        if (!last) {
          for (; Micro::kTwoSets && j + 1 < je; j += 2) {
            // a negative column is huge as uint32: left to the last tile's check
            const uint32_t c0 = static_cast<uint32_t>(static_cast<int32_t>(col_idx[j]));
            const uint32_t c1 = static_cast<uint32_t>(static_cast<int32_t>(col_idx[j + 1]));
            if (c0 >= lim || c1 >= lim) break;
            Micro::step(acc, wd[j], base + static_cast<int64_t>(c0) * stride);
            Micro::step(acc2, wd[j + 1], base + static_cast<int64_t>(c1) * stride);
          }
          for (; j < je; ++j) {
            const uint32_t col = static_cast<uint32_t>(static_cast<int32_t>(col_idx[j]));
            if (col >= lim) break;
            Micro::step(acc, wd[j], base + static_cast<int64_t>(col) * stride);
          }
          cursor[n - nb0] = j;
          Micro::add(acc, acc2);
          Micro::store(acc, saved);
          continue;
        }
        for (; Micro::kTwoSets && j + 1 < je; j += 2) {
          const int64_t c0 = static_cast<int64_t>(col_idx[j]), c1 = static_cast<int64_t>(col_idx[j + 1]);
          if (!x86::col_ok(c0, n_col_blocks) || !x86::col_ok(c1, n_col_blocks)) break;
          Micro::step(acc, wd[j], base + c0 * stride);
          Micro::step(acc2, wd[j + 1], base + c1 * stride);
        }
        Micro::add(acc, acc2);
        for (; j < je; ++j) {
          const int64_t col = static_cast<int64_t>(col_idx[j]);
          if (!x86::col_ok(col, n_col_blocks)) {
            ok = false;
            continue;
          }
          Micro::step(acc, wd[j], base + col * stride);
        }
        if (n - n_tile == x86::kTileN) {
          flush_transposed<Micro>(tile, ldt, pass_rows, n_tile, x86::kTileN, N, out_m);
          n_tile = n;
        }
        // Rows past the chunk's end are padding (scale 0, zp 0): computed, never flushed.
        Micro::finish(acc, zp, a_scale, x86::out_row(w_sum, w_scale, bias, n), relu, tile + (n - n_tile) * ldt);
      }
      if (last && nb1 > nb0) flush_transposed<Micro>(tile, ldt, pass_rows, n_tile, nb1 - n_tile, N, out_m);
    }
  }
  return ok;
}

template <class Micro, typename Index>
SQFX_GEMM_TARGET bool gemm_chunk(const PanelRows& a, int64_t chunk, const BsrWeight& w,
                                 const Index* col_idx, float* out, bool relu, int64_t rb_begin,
                                 int64_t rb_end) {
  using Full = typename Micro::template Acc<Micro::kMaxUnits>;
  thread_local std::vector<int32_t> acc_buf;
  thread_local std::vector<int64_t> cursor;
  thread_local std::vector<float> tile;
  const int64_t acc_ints = kGemmRowsN * static_cast<int64_t>(sizeof(Full) / sizeof(int32_t));
  if (static_cast<int64_t>(acc_buf.size()) < acc_ints) acc_buf.resize(acc_ints);
  if (static_cast<int64_t>(cursor.size()) < kGemmRowsN) cursor.resize(kGemmRowsN);
  const int64_t pass_max = Micro::kUnitRows * Micro::kMaxUnits;
  if (static_cast<int64_t>(tile.size()) < pass_max * x86::kTileN) tile.resize(pass_max * x86::kTileN);
  const int64_t m0 = chunk * a.mc;
  const int64_t rows = std::min(a.mc, a.M - m0);
  const uint8_t* panel = Micro::act_panel(a, chunk);
  bool ok = true;
  for (int64_t ms = 0; ms < rows; ms += pass_max) {
    const int64_t units = std::min<int64_t>(Micro::kMaxUnits, (rows - ms + Micro::kUnitRows - 1) / Micro::kUnitRows);
    bool (*pass)(const PanelRows&, const uint8_t*, int64_t, int64_t, int64_t, const BsrWeight&,
                 const Index*, float*, bool, int64_t, int64_t, int32_t*, int64_t*, float*);
    static_assert(Micro::kMaxUnits == 4, "the switch below covers 1..4 units");
    switch (units) {
      case 4: pass = gemm_pass<Micro, Index, 4>; break;
      case 3: pass = gemm_pass<Micro, Index, 3>; break;
      case 2: pass = gemm_pass<Micro, Index, 2>; break;
      default: pass = gemm_pass<Micro, Index, 1>; break;
    }
    ok &= pass(a, panel, m0, ms, rows, w, col_idx, out, relu, rb_begin, rb_end, acc_buf.data(),
               cursor.data(), tile.data());
  }
  return ok;
}

template <class Micro>
SQFX_GEMM_TARGET bool gemm_entry(const PanelRows& a, int64_t chunk, const BsrWeight& w, float* out,
                                 bool relu, int64_t rb_begin, int64_t rb_end) {
  if (w.col_idx_16)
    return gemm_chunk<Micro>(a, chunk, w, static_cast<const int16_t*>(w.col_idx), out, relu, rb_begin, rb_end);
  return gemm_chunk<Micro>(a, chunk, w, static_cast<const int32_t*>(w.col_idx), out, relu, rb_begin, rb_end);
}
