// The elementwise parts of a decoder layer, one pass each, float32 on AVX-512: RMS norm, SiLU(gate) * up, and the
// rotary embedding of q and k.
//
// In transformers' eager forward each of these is 5-12 torch ops (pow, mean, add, rsqrt, mul, mul; slice, neg, cat,
// mul, add per tensor), each a dispatch, an allocation and a pass over memory. On a packed SmolLM2 prefill of 64
// tokens they took ~13 ms of ~89 (Zen 4, 2 threads): as much as llama.cpp's whole lead there.
//
// The maths is transformers' (LlamaRMSNorm, LlamaMLP with SiLU, apply_rotary_pos_emb with rotate_half); sums run in
// another order than torch's and e^x is vec_exp.h's, so results agree to float32 rounding, not bit for bit. Each
// output element is computed by one thread in one fixed order, so they do not depend on the thread count.
#include <torch/extension.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "vec_exp.h"

namespace {

constexpr int64_t kGrain = 16384;  // floats a thread is worth waking for

bool layer_ops_supported() {
#if defined(__x86_64__) || defined(_M_X64)
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

void check_rows(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, op, " takes float32 CPU tensors");
  TORCH_CHECK(x.is_contiguous(), op, ": the input must be contiguous");
  TORCH_CHECK(layer_ops_supported(), op, ": needs AVX-512");
}

#if defined(__x86_64__) || defined(_M_X64)
// y = w * (x / sqrt(mean(x^2) + eps)) over each row of D floats
__attribute__((target("avx512f"))) void rms_norm_rows(const float* x, const float* w, float* y, int64_t rows,
                                                      int64_t D, float eps) {
  const __mmask16 tail = static_cast<__mmask16>((1u << (D % 16)) - 1);
  const int64_t whole = D / 16 * 16;
  for (int64_t r = 0; r < rows; ++r, x += D, y += D) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < whole; i += 16) {
      const __m512 v = _mm512_loadu_ps(x + i);
      acc = _mm512_add_ps(acc, _mm512_mul_ps(v, v));
    }
    if (tail) {
      const __m512 v = _mm512_maskz_loadu_ps(tail, x + whole);
      acc = _mm512_add_ps(acc, _mm512_mul_ps(v, v));
    }
    const float inv = 1.f / std::sqrt(_mm512_reduce_add_ps(acc) / static_cast<float>(D) + eps);
    const __m512 s = _mm512_set1_ps(inv);
    for (int64_t i = 0; i < whole; i += 16)
      _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(w + i), _mm512_mul_ps(_mm512_loadu_ps(x + i), s)));
    if (tail)
      _mm512_mask_storeu_ps(y + whole, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, w + whole),
                                                           _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + whole), s)));
  }
}

// silu(g) * u = g u / (1 + e^-g), with e^-|g| so that the exponent is never positive
__attribute__((target("avx512f"))) inline __m512 silu_times(__m512 g, __m512 u) {
  const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));
  const __mmask16 negative = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
  // g >= 0: g / (1 + e^-g); g < 0: g e^g / (1 + e^g)
  const __m512 num = _mm512_mask_mul_ps(g, negative, g, e);
  return _mm512_mul_ps(_mm512_div_ps(num, _mm512_add_ps(_mm512_set1_ps(1.f), e)), u);
}

__attribute__((target("avx512f"))) void silu_mul_span(const float* g, const float* u, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, silu_times(_mm512_loadu_ps(g + i), _mm512_loadu_ps(u + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, silu_times(_mm512_maskz_loadu_ps(m, g + i), _mm512_maskz_loadu_ps(m, u + i)));
  }
}

// One token's heads: out = x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1) over each head's halves. Two
// products and a sum, each rounded, as torch computes them (no fused multiply-add): bit for bit transformers' q and k.
__attribute__((target("avx512f"), optimize("fp-contract=off"))) void rotate_heads(const float* x, const float* c,
                                                                                  const float* s, float* out,
                                                                                  int64_t heads, int64_t D) {
  const int64_t half = D / 2;
  for (int64_t h = 0; h < heads; ++h, x += D, out += D)
    for (int64_t i = 0; i < half; i += 16) {
      const __m512 x1 = _mm512_loadu_ps(x + i), x2 = _mm512_loadu_ps(x + half + i);
      _mm512_storeu_ps(out + i, _mm512_sub_ps(_mm512_mul_ps(x1, _mm512_loadu_ps(c + i)),
                                              _mm512_mul_ps(x2, _mm512_loadu_ps(s + i))));
      _mm512_storeu_ps(out + half + i, _mm512_add_ps(_mm512_mul_ps(x2, _mm512_loadu_ps(c + half + i)),
                                                     _mm512_mul_ps(x1, _mm512_loadu_ps(s + half + i))));
    }
}
#endif

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  check_rows(x, "rms_norm");
  const int64_t D = x.size(-1);
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() && w.dim() == 1 && w.size(0) == D,
              "rms_norm: the weight must be float32 [", D, "]");
  at::Tensor y = at::empty_like(x);
  const int64_t rows = D ? x.numel() / D : 0;
#if defined(__x86_64__) || defined(_M_X64)
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    rms_norm_rows(xp + r0 * D, w.data_ptr<float>(), yp + r0 * D, r1 - r0, D, static_cast<float>(eps));
  });
#endif
  return y;
}

at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up) {
  check_rows(gate, "silu_mul");
  check_rows(up, "silu_mul");
  TORCH_CHECK(gate.sizes() == up.sizes(), "silu_mul: gate and up must have one shape");
  at::Tensor y = at::empty_like(gate);
#if defined(__x86_64__) || defined(_M_X64)
  const float *g = gate.data_ptr<float>(), *u = up.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, gate.numel(), kGrain,
                   [&](int64_t i0, int64_t i1) { silu_mul_span(g + i0, u + i0, yp + i0, i1 - i0); });
#endif
  return y;
}

// q [B, T, Hq D], k [B, T, Hk D] (the projections' outputs), cos and sin [1 or B, T, D] -> both rotated, same shapes
std::tuple<at::Tensor, at::Tensor> rotary_qk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                             const at::Tensor& sin, int64_t head_dim) {
  check_rows(q, "rotary_qk");
  check_rows(k, "rotary_qk");
  check_rows(cos, "rotary_qk");
  check_rows(sin, "rotary_qk");
  TORCH_CHECK(head_dim > 0 && head_dim % 32 == 0, "rotary_qk: head dim must be a multiple of 32");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && q.size(0) == k.size(0) && q.size(1) == k.size(1) &&
                  q.size(2) % head_dim == 0 && k.size(2) % head_dim == 0,
              "rotary_qk: q and k must be [B, T, heads x head_dim]");
  const int64_t B = q.size(0), T = q.size(1);
  TORCH_CHECK(cos.dim() == 3 && cos.sizes() == sin.sizes() && (cos.size(0) == 1 || cos.size(0) == B) &&
                  cos.size(1) == T && cos.size(2) == head_dim,
              "rotary_qk: cos and sin must be [1 or B, T, head_dim]");
  at::Tensor qo = at::empty_like(q), ko = at::empty_like(k);
#if defined(__x86_64__) || defined(_M_X64)
  const int64_t Nq = q.size(2), Nk = k.size(2), cb = cos.size(0) == 1 ? 0 : T * head_dim;
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  float *qop = qo.data_ptr<float>(), *kop = ko.data_ptr<float>();
  at::parallel_for(0, B * T, std::max<int64_t>(1, kGrain / (Nq + Nk)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t at = (r / T) * cb + (r % T) * head_dim;
      rotate_heads(qp + r * Nq, cp + at, sp + at, qop + r * Nq, Nq / head_dim, head_dim);
      rotate_heads(kp + r * Nk, cp + at, sp + at, kop + r * Nk, Nk / head_dim, head_dim);
    }
  });
#endif
  return {qo, ko};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmbin_cpu, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("silu_mul(Tensor gate, Tensor up) -> Tensor");
  m.def("rotary_qk(Tensor q, Tensor k, Tensor cos, Tensor sin, int head_dim) -> (Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(llmbin_cpu, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("silu_mul", &silu_mul);
  m.impl("rotary_qk", &rotary_qk);
}
