// The salient weights PB-LLM keeps in float16 outside the bit planes, as a CSR product added to the planes'
// output: y[n] += sum over row n's entries of value x x[column]. Column indices are int16 where K allows.
#pragma once

#include "lut_kernels.h"

namespace {

template <typename I>
void sparse_scalar(const at::Half* vals, const I* cols, const int32_t* rowptr, const float* x, float* y, int64_t n0,
                   int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    float acc = 0.f;
    for (int32_t e = rowptr[n]; e < rowptr[n + 1]; ++e) acc += static_cast<float>(vals[e]) * x[cols[e]];
    y[n] += acc;
  }
}

#ifdef LLMBIN_X86
template <typename I>
__attribute__((target("avx512f"))) void sparse_avx512(const at::Half* vals, const I* cols, const int32_t* rowptr,
                                                      const float* x, float* y, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    int32_t e = rowptr[n];
    const int32_t end = rowptr[n + 1];
    __m512 acc = _mm512_setzero_ps();
    for (; e + kRows <= end; e += kRows) {
      __m512i idx;
      if constexpr (sizeof(I) == 2)
        idx = _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(cols + e)));
      else
        idx = _mm512_loadu_si512(cols + e);
      const __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(vals + e)));
      acc = _mm512_fmadd_ps(v, _mm512_i32gather_ps(idx, x, 4), acc);
    }
    float tail = 0.f;
    for (; e < end; ++e) tail += static_cast<float>(vals[e]) * x[cols[e]];
    y[n] += _mm512_reduce_add_ps(acc) + tail;
  }
}
#endif

}  // namespace
