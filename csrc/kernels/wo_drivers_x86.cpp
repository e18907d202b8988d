// Drivers of the weight-only tiled kernels (wo_kernels.h): the `call` entries of
// the f32_qc8w_* rows of the kernel table (dispatch.cpp). Each runs one whole
// call: pads or transposes the activations into its scratch, then splits the
// output over torch's pool. Returns false on a block column index out of range.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "parallel.h"
#include "wo_kernels.h"

namespace sqfx {
namespace {

// Activations (about this many bytes) that stay in L2 while every group of 4
// weight rows passes over them; the weights are read once per block, so a
// block holds at least kRowdotMinBlockRows rows (6-row blocks made 4096x4096 at
// M = 32 1.7x slower: 16 MB of weights read from memory per 6 rows).
constexpr int64_t kRowdotBlockBytes = 256 * 1024, kRowdotMinBlockRows = 36;

constexpr int64_t kDenseChunkBytes = 3 * 1024 * 1024, kDenseChunkMinRows = 96;

thread_local std::vector<float> tls_panel, tls_transposed, tls_wbuf, tls_padded;
thread_local std::vector<int8_t> tls_rows8;

// Chunk `chunk` of mt input rows of x [M, K] into dst [ld][mt], zero past K and past M.
void transpose_chunk(const float* x, int64_t M, int64_t K, int64_t ld, int64_t mt, int64_t chunk,
                     float* dst) {
  const int64_t m0 = chunk * mt, rows = std::min(mt, M - m0);
  constexpr int64_t kStep = 16;  // k columns per pass: the written lines stay in L1
  for (int64_t k0 = 0; k0 < ld; k0 += kStep) {
    const int64_t k1 = std::min(ld, k0 + kStep), kr = std::min(K, k1);
    for (int64_t m = 0; m < mt; ++m) {
      const float* src = x + (m0 + m) * K;
      int64_t k = k0;
      if (m < rows) {
        for (; k < kr; ++k) dst[k * mt + m] = src[k];
      }
      for (; k < k1; ++k) dst[k * mt + m] = 0.0f;
    }
  }
}

using RowdotKernel = bool (*)(const WoRows&, const BsrWeight&, bool, float*, int64_t, int64_t, int8_t*);

bool run_rowdot(RowdotKernel kernel, const float* x, int64_t M, const BsrWeight& w, bool relu, float* out) {
  const int64_t ld = w.n_col_blocks * w.col_block;
  const int64_t kpad = (ld + kWoRowdotAlign - 1) / kWoRowdotAlign * kWoRowdotAlign;
  if (kpad != w.K) {  // rows zero padded to whole vectors
    float* padded = grow(tls_padded, M * kpad);
    for (int64_t m = 0; m < M; ++m) {
      std::memcpy(padded + m * kpad, x + m * w.K, sizeof(float) * w.K);
      std::fill(padded + m * kpad + w.K, padded + (m + 1) * kpad, 0.0f);
    }
    x = padded;
  }
  const int64_t mb = std::min<int64_t>(
      M, std::max<int64_t>(kRowdotMinBlockRows, (kRowdotBlockBytes / 4) / kpad / 6 * 6));
  const int64_t n_mblocks = (M + mb - 1) / mb, n_groups = (w.N + 3) / 4;
  std::atomic<bool> ok{true};
  run_range(n_mblocks * n_groups, mb * kpad * 4, [&](int64_t b, int64_t e) {
    int8_t* rows = grow(tls_rows8, 4 * kpad);
    for (int64_t t = b; t < e;) {
      const int64_t blk = t / n_groups, g = t % n_groups, g_end = std::min(n_groups, g + (e - t));
      const int64_t m0 = blk * mb;
      const WoRows a{x + m0 * kpad, std::min(mb, M - m0), kpad, w.K};
      if (!kernel(a, w, relu, out + m0 * w.N, g, g_end, rows)) ok.store(false);
      t += g_end - g;
    }
  });
  return ok.load();
}

using DenseKernel = bool (*)(const WoRows&, const BsrWeight&, bool, float*, int64_t, int64_t, float*);

bool run_dense(DenseKernel kernel, int64_t nr, const float* x, int64_t M, const BsrWeight& w, bool relu,
               float* out) {
  const int64_t ld = w.n_col_blocks * w.col_block;
  // Input rows per pass over a thread's panels: that chunk of x stays cached while every panel
  // reads it (one pass over all of x per panel sent 3072x768 at M = 2048 to memory: 0.85x
  // F.linear); each panel is dequantized again per chunk, under 1% of the chunk's work.
  const int64_t chunk = std::max<int64_t>(kDenseChunkMinRows, kDenseChunkBytes / 4 / std::max<int64_t>(1, w.K));
  std::atomic<bool> ok{true};
  run_range((w.N + nr - 1) / nr, M * ld * nr, [&](int64_t b, int64_t e) {
    float* panel = grow(tls_panel, wo_dense_scratch_floats(ld, nr));
    for (int64_t m0 = 0; m0 < M; m0 += chunk) {
      const WoRows a{x + m0 * w.K, std::min(chunk, M - m0), w.K, w.K};
      if (!kernel(a, w, relu, out + m0 * w.N, b, e, panel)) {
        ok.store(false);
        return;
      }
    }
  });
  return ok.load();
}

using BsrTileKernel = bool (*)(const float*, int64_t, int64_t, const BsrWeight&, bool, float*, int64_t,
                               int64_t, float*);

bool run_bsr(BsrTileKernel kernel, int64_t mt, const float* x, int64_t M, const BsrWeight& w, bool relu,
             float* out) {
  const int64_t ld = w.n_col_blocks * w.col_block;
  const int64_t n_chunks = (M + mt - 1) / mt, n_rb = w.n_row_blocks;
  float* xt = grow(tls_transposed, n_chunks * ld * mt);
  run_range(n_chunks, ld * mt, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) transpose_chunk(x, M, w.K, ld, mt, c, xt + c * ld * mt);
  });
  int64_t max_blocks = 0;
  for (int64_t i = 0; i < n_rb; ++i) max_blocks = std::max<int64_t>(max_blocks, w.row_ptr[i + 1] - w.row_ptr[i]);
  const int64_t wbuf_size = std::max<int64_t>(1, max_blocks * w.row_block * w.col_block);
  const int64_t macs_per_rb = std::max<int64_t>(1, w.nnz / std::max<int64_t>(1, n_rb)) * w.row_block * w.col_block;
  std::atomic<bool> ok{true};
  run_range(n_chunks * n_rb, macs_per_rb * mt, [&](int64_t b, int64_t e) {
    float* wbuf = grow(tls_wbuf, wbuf_size);
    for (int64_t t = b; t < e;) {
      const int64_t chunk = t / n_rb, r = t % n_rb, r_end = std::min(n_rb, r + (e - t));
      const int64_t m0 = chunk * mt;
      if (!kernel(xt + chunk * ld * mt, m0, std::min(mt, M - m0), w, relu, out, r, r_end, wbuf)) {
        ok.store(false);
      }
      t += r_end - r;
    }
  });
  return ok.load();
}

}  // namespace

bool wo_call_rowdot_6x4_avx512(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out) {
  return run_rowdot(wo_f32_rowdot_6x4_avx512, x, M, w, relu, out);
}
bool wo_call_rowdot_3x4_avx2(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out) {
  return run_rowdot(wo_f32_rowdot_3x4_avx2, x, M, w, relu, out);
}
bool wo_call_dense_12x32_avx512(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out) {
  return run_dense(wo_f32_dense_12x32_avx512, kWoDenseNr512, x, M, w, relu, out);
}
bool wo_call_dense_6x16_avx2(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out) {
  return run_dense(wo_f32_dense_6x16_avx2, kWoDenseNr256, x, M, w, relu, out);
}
bool wo_call_bsr_m64_avx512(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out) {
  return run_bsr(wo_f32_bsr_m64_avx512, kWoBsrMt512, x, M, w, relu, out);
}
bool wo_call_bsr_m32_avx2(const float* x, int64_t M, const BsrWeight& w, bool relu, float* out) {
  return run_bsr(wo_f32_bsr_m32_avx2, kWoBsrMt256, x, M, w, relu, out);
}

}  // namespace sqfx
