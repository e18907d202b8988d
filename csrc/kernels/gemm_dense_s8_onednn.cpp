// Dense layout, token batches: oneDNN's int8 GEMM, reached through the
// dispatcher as aten::_int_mm.out (s8 x s8 -> s32), with the same exact
// integers as sqfx.reference.
//
// The activations are quantized to u8 as everywhere else and stored as s8
// q - 128 (the top bit flipped, fused into the quantizer). With q' = q - 128:
//   sum_k q * w = sum_k q' * w + 128 * w_sum,
// so acc = C + 128 * w_sum is the same u8 x s8 accumulator the other kernels
// compute (it fits in int32 below kMaxInt32InFeatures, so the wrapping int32
// adds give it exactly) and the shared epilogue then subtracts zp * w_sum.
//
// oneDNN is exact only where it multiplies with VNNI (vpdpbusd): on AVX2 or
// AVX-512 without VNNI its s8 GEMM goes through the saturating vpmaddubsw and
// is wrong by up to 2% of the result (measured with ONEDNN_MAX_CPU_ISA=AVX2).
// So the path is used only when the CPU has VNNI and a one-time probe with
// saturating operands gives the exact result (this also catches an ISA cap
// set through ONEDNN_MAX_CPU_ISA, and a torch built without oneDNN, whose
// plain loop is exact but slow).
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <immintrin.h>

#include <array>
#include <cstring>
#include <exception>

#include "epilogue_x86.h"
#include "kernels.h"

namespace sqfx {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

Tensor blob(const void* data, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride,
            ScalarType dtype) {
  const int64_t sizes[2] = {rows, cols};
  const int64_t strides[2] = {row_stride, col_stride};
  return torch::stable::from_blob(const_cast<void*>(data), {sizes, 2}, {strides, 2},
                                  torch::stable::Device(torch::headeronly::DeviceType::CPU),
                                  dtype);
}

// c [M, N] = a [M, K] x b [K, N]; b given by its transpose bt [N, K] (row stride ldb).
void int_mm(const int8_t* a, int64_t M, int64_t K, int64_t lda, const int8_t* bt, int64_t N,
            int64_t ldb, int32_t* c) {
  std::array<StableIValue, 3> stack{
      torch::stable::detail::from(blob(a, M, K, lda, 1, ScalarType::Char)),
      torch::stable::detail::from(blob(bt, K, N, 1, ldb, ScalarType::Char)),
      torch::stable::detail::from(blob(c, M, N, N, 1, ScalarType::Int))};
  STABLE_TORCH_ERROR_CODE_CHECK(
      torch_call_dispatcher("aten::_int_mm", "out", stack.data(), TORCH_ABI_VERSION));
  // The returned tensor aliases c; dropping the handle frees only the handle.
  (void)torch::stable::detail::to<Tensor>(stack[0]);
}

// Operands whose pair sums (after the s8 -> u8 shift that non-VNNI kernels
// use) overflow int16: a saturating GEMM gets these wrong.
bool probe_exact() {
  constexpr int64_t M = 16, N = 16, K = 64;
  int8_t a[M * K], b[N * K];
  int32_t c[M * N];
  for (int64_t i = 0; i < M * K; ++i) a[i] = (i % 3 == 0) ? -128 : 127;
  for (int64_t i = 0; i < N * K; ++i) b[i] = (i % 5 == 0) ? -127 : 127;
  try {
    int_mm(a, M, K, K, b, N, K, c);
  } catch (const std::exception&) {
    return false;
  }
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      int32_t s = 0;
      for (int64_t k = 0; k < K; ++k) s += int32_t(a[m * K + k]) * b[n * K + k];
      if (c[m * N + n] != s) return false;
    }
  return true;
}

}  // namespace

bool dense_onednn_usable() {
  static const bool usable = [] {
    __builtin_cpu_init();
    const bool vnni = __builtin_cpu_supports("avx512vnni") || __builtin_cpu_supports("avxvnni");
    return vnni && __builtin_cpu_supports("avx2") && probe_exact();
  }();
  return usable;
}

void dense_onednn_gemm(const QuantizedRows& a, const int8_t* weight, int64_t N, int64_t ldw, int32_t* c) {
  int_mm(reinterpret_cast<const int8_t*>(a.q), a.M, a.ld, a.ld, weight, N, ldw, c);
}

bool dense_layout_cols_ok(const BsrWeight& w) {
  // The dense layout stores block column 0 in every row; check what the GEMM ignores.
  for (int64_t n = 0; n < w.N; ++n) {
    const int64_t col = w.col_idx_16 ? static_cast<const int16_t*>(w.col_idx)[n]
                                     : static_cast<const int32_t*>(w.col_idx)[n];
    if (col != 0) return false;
  }
  return true;
}

__attribute__((target("avx2,fma"))) void dense_row_sums(const int8_t* weight, int64_t ldw, int64_t K,
                                                           int64_t n_begin, int64_t n_end, int32_t* sums) {
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  for (int64_t n = n_begin; n < n_end; ++n) {
    const int8_t* row = weight + n * ldw;
    __m256i acc = _mm256_setzero_si256();
    int64_t k = 0;
    // u8 ones x s8 weights: pairs sum to at most 2 * 128 in magnitude, exact in int16.
    for (; k + 32 <= K; k += 32) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k));
      acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, v), ones16));
    }
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
    int32_t total = 0;
    for (int i = 0; i < 8; ++i) total += lanes[i];
    for (; k < K; ++k) total += row[k];
    sums[n] = total;
  }
}

namespace {

// AVX-512 twin of the loop below: 16 outputs per step, the tail under a mask,
// the weight's vectors read through local pointers (an intrinsic store may alias
// BsrWeight, so reading through w re-loaded them after every store). Same float32
// operations in the same order as x86::epilogue_n8.
__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl"))) void epilogue_rows_avx512(
    const QuantizedRows& a, const BsrWeight& w, bool relu, float* out, int64_t m_begin,
    int64_t m_end, const int32_t* shift_sum) {
  const int32_t* const wsum = w.w_sum;
  const float* const wscale = w.w_scale;
  const float* const bias = w.bias;
  const int64_t N = w.N;
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t m = m_begin; m < m_end; ++m) {
    float* y = out + m * N;  // holds C as int32 on entry
    const __m512i zp = _mm512_set1_epi32(a.zp[m]);
    const __m512 a_scale = _mm512_set1_ps(a.scale[m]);
    for (int64_t n0 = 0; n0 < N; n0 += 16) {
      const __mmask16 k = N - n0 >= 16 ? static_cast<__mmask16>(0xFFFF)
                                       : static_cast<__mmask16>((1u << (N - n0)) - 1);
      // acc = C + 128 * row sum (wrapping; the true value fits in int32)
      const __m512i acc = _mm512_add_epi32(_mm512_maskz_loadu_epi32(k, y + n0),
                                           _mm512_slli_epi32(_mm512_maskz_loadu_epi32(k, shift_sum + n0), 7));
      const __m512i corr = _mm512_sub_epi32(acc, _mm512_mullo_epi32(zp, _mm512_maskz_loadu_epi32(k, wsum + n0)));
      const __m512 sc = _mm512_mul_ps(a_scale, _mm512_maskz_loadu_ps(k, wscale + n0));
      __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(corr), sc);
      if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bias + n0));
      if (relu) v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), v, zero);
      _mm512_mask_storeu_ps(y + n0, k, v);
    }
  }
}

}  // namespace

__attribute__((target("avx2,fma"))) void dense_onednn_epilogue_rows(
    const QuantizedRows& a, const BsrWeight& w, bool relu, float* out, int64_t m_begin,
    int64_t m_end, const int32_t* shift_sum, bool wide) {
  if (wide) return epilogue_rows_avx512(a, w, relu, out, m_begin, m_end, shift_sum);
  // shift_sum: the true row sums of the weight the GEMM read (undo the q - 128 shift exactly,
  // whatever w_sum says: the op only bounds it).
  const int32_t* ssum = shift_sum;
  for (int64_t m = m_begin; m < m_end; ++m) {
    float* y = out + m * w.N;  // holds C as int32 on entry
    const char* cm = reinterpret_cast<const char*>(y);
    for (int64_t n0 = 0; n0 < w.N; n0 += 8) {
      const int64_t count = w.N - n0 < 8 ? w.N - n0 : 8;
      __m256i acc;
      if (count == 8) {
        // acc = C + 128 * w_sum (wrapping; the true value fits in int32)
        const __m256i wsum = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ssum + n0));
        acc = _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(cm + 4 * n0)),
                               _mm256_slli_epi32(wsum, 7));
      } else {
        alignas(32) int32_t t[8] = {0};
        std::memcpy(t, cm + 4 * n0, count * sizeof(int32_t));
        for (int64_t r = 0; r < count; ++r)
          t[r] = static_cast<int32_t>(static_cast<uint32_t>(t[r]) +
                                      (static_cast<uint32_t>(ssum[n0 + r]) << 7));
        acc = _mm256_load_si256(reinterpret_cast<const __m256i*>(t));
      }
      x86::epilogue_n8(acc, a.zp[m], a.scale[m], w, n0, count, relu, y);
    }
  }
}

}  // namespace sqfx
