// Dynamic per-row asymmetric uint8 quantization of activations.
// The reference twin is sqfx.reference.quantize_rows; both must agree bit for
// bit, so every step is a single IEEE float32 operation (no FMA contraction:
// the build passes -ffp-contract=off) and rounding is round-half-to-even.
#include "kernels.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

namespace sqfx {

void quantize_rows(const float* x, int64_t K, int64_t m_begin, int64_t m_end,
                   const QuantizedRows& out) {
  constexpr float kInv255 = 1.0f / 255.0f;
  for (int64_t m = m_begin; m < m_end; ++m) {
    const float* row = x + m * K;
    uint8_t* q = const_cast<uint8_t*>(out.q) + m * out.ld;
    float* scale = const_cast<float*>(out.scale) + m;
    int32_t* zp = const_cast<int32_t*>(out.zp) + m;

    float mn = 0.0f, mx = 0.0f;
    bool finite = true;
    for (int64_t k = 0; k < K; ++k) {
      float v = row[k];
      finite &= std::isfinite(v);
      mn = v < mn ? v : mn;
      mx = v > mx ? v : mx;
    }
    float range = mx - mn;
    if (!finite || !std::isfinite(range)) {
      // A row with NaN/Inf yields NaN outputs, as an fp32 linear would.
      *scale = NAN;
      *zp = 0;
      std::memset(q, 0, out.ld);
      continue;
    }
    // Clamp the scale to the smallest normal float: for a row whose range is
    // below ~255 * FLT_MIN, range / 255 underflows (to 0 or a subnormal) and
    // 1 / s to +Inf, and then 0 * Inf = NaN would reach the float -> int casts
    // below, which is undefined behaviour. With s >= FLT_MIN, inv <= 2^126 and
    // every product stays finite.
    float s = range > 0.0f ? std::max(range * kInv255, FLT_MIN) : 1.0f;
    float inv = 1.0f / s;
    float z = std::nearbyintf(-mn * inv);
    z = z < 0.0f ? 0.0f : (z > 255.0f ? 255.0f : z);
    *scale = s;
    *zp = static_cast<int32_t>(z);
    for (int64_t k = 0; k < K; ++k) {
      float v = std::nearbyintf(row[k] * inv) + z;
      v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
      q[k] = static_cast<uint8_t>(v);
    }
    // Padding columns multiply zero weights; fill them for determinism.
    std::memset(q + K, static_cast<int>(*zp), out.ld - K);
  }
}

}  // namespace sqfx
