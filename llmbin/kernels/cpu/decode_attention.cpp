// One query token's attention over a static KV cache, grouped-query heads without copies
// (runtime/grouped_attention.py): q [B, Hkv, G, D] (the G query heads sharing a KV head as its rows),
// k, v [B, Hkv, cache_len, D], an optional mask [B or 1, 1, 1, cache_len] (bool: attend where true; float: added),
// out [B, Hkv, G, D]. For this shape torch's SDPA spends ~35 us per call setting up its blocked flash
// kernel, more than the arithmetic; here a layer of SmolLM2 takes a few us. Masked cache slots
// (the unwritten tail of the static cache) are skipped, not computed and then zeroed.
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <type_traits>
#include <limits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "vec_exp.h"

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Scores of one query row against every unmasked cache slot (masked: -inf), and their maximum.
template <typename MaskT>
inline __attribute__((always_inline)) float scores_impl(const float* qg, const float* k, const MaskT* mask,
                                                        int64_t cache_len, int64_t D, float scale, float* sg) {
  float best = kNegInf;
  for (int64_t l = 0; l < cache_len; ++l) {
    if constexpr (std::is_same_v<MaskT, bool>) {
      if (mask && !mask[l]) {
        sg[l] = kNegInf;
        continue;
      }
    }
    const float* kl = k + l * D;
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t d = 0; d < D; ++d) acc += qg[d] * kl[d];
    float s = acc * scale;
    if constexpr (std::is_same_v<MaskT, float>) {
      if (mask) s += mask[l];
    }
    sg[l] = s;
    best = std::max(best, s);
  }
  return best;
}

// out = sum_l p_l v_l / sum_l p_l over the slots with p_l > 0 (p holds the exponentials).
inline __attribute__((always_inline)) void mix_impl(const float* p, const float* v, int64_t cache_len, int64_t D,
                                                    float* og) {
  for (int64_t d = 0; d < D; ++d) og[d] = 0.f;
  float total = 0.f;
  for (int64_t l = 0; l < cache_len; ++l) {
    if (p[l] == 0.f) continue;
    total += p[l];
    const float* vl = v + l * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) og[d] += p[l] * vl[d];
  }
  const float inv = total > 0.f ? 1.f / total : 0.f;  // nothing to attend to: zeros (SDPA would give NaN)
  for (int64_t d = 0; d < D; ++d) og[d] *= inv;
}

#if defined(__x86_64__) || defined(_M_X64)
template <typename MaskT>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void attend_avx512(
    const float* q, const float* k, const float* v, const MaskT* mask, int64_t G, int64_t cache_len, int64_t D, float scale,
    float* out, float* s) {
  for (int64_t g = 0; g < G; ++g) {
    const float best = scores_impl(q + g * D, k, mask, cache_len, D, scale, s);
    if (best == kNegInf) {
      for (int64_t l = 0; l < cache_len; ++l) s[l] = 0.f;
    } else {
      int64_t l = 0;
      for (; l + 16 <= cache_len; l += 16)
        _mm512_storeu_ps(s + l, exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + l), _mm512_set1_ps(best))));
      for (; l < cache_len; ++l) s[l] = std::exp(s[l] - best);
    }
    mix_impl(s, v, cache_len, D, out + g * D);
  }
}

// Head dims of 16 NC (64, 128): R query rows at a time share each cache row's loads and keep their dot products and
// outputs in registers (the generic loops above spill a dot product's sum to the stack every slot: ~4x slower).
template <int NC, typename MaskT>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void attend_avx512_rows(
    const float* q, const float* k, const float* v, const MaskT* mask, int64_t G, int64_t cache_len, float scale,
    float* out, float* s) {
  constexpr int64_t D = 16 * NC;
  constexpr int R = 20 / NC;  // R x NC output accumulators + NC cache loads within the 32 registers
  for (int64_t g0 = 0; g0 < G; g0 += R) {
    const int rows = static_cast<int>(std::min<int64_t>(R, G - g0));
    __m512 qv[R][NC];
    float best[R];
    for (int r = 0; r < R; ++r) {  // rows past G repeat the last one; their results are not stored
      for (int c = 0; c < NC; ++c) qv[r][c] = _mm512_loadu_ps(q + (g0 + std::min(r, rows - 1)) * D + 16 * c);
      best[r] = kNegInf;
    }
    for (int64_t l = 0; l < cache_len; ++l) {
      if constexpr (std::is_same_v<MaskT, bool>) {
        if (mask && !mask[l]) {
          for (int r = 0; r < rows; ++r) s[r * cache_len + l] = kNegInf;
          continue;
        }
      }
      __m512 kc[NC];
      for (int c = 0; c < NC; ++c) kc[c] = _mm512_loadu_ps(k + l * D + 16 * c);
      for (int r = 0; r < R; ++r) {
        __m512 acc = _mm512_mul_ps(qv[r][0], kc[0]);
        for (int c = 1; c < NC; ++c) acc = _mm512_fmadd_ps(qv[r][c], kc[c], acc);
        float x = _mm512_reduce_add_ps(acc) * scale;
        if constexpr (std::is_same_v<MaskT, float>) {
          if (mask) x += mask[l];
        }
        if (r < rows) s[r * cache_len + l] = x, best[r] = std::max(best[r], x);
      }
    }
    for (int r = 0; r < rows; ++r) {
      float* sr = s + r * cache_len;
      int64_t l = 0;
      if (best[r] == kNegInf) {
        for (; l < cache_len; ++l) sr[l] = 0.f;
        continue;
      }
      for (; l + 16 <= cache_len; l += 16)
        _mm512_storeu_ps(sr + l, exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(sr + l), _mm512_set1_ps(best[r]))));
      for (; l < cache_len; ++l) sr[l] = std::exp(sr[l] - best[r]);
    }
    __m512 o[R][NC];
    float total[R] = {};
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NC; ++c) o[r][c] = _mm512_setzero_ps();
    for (int64_t l = 0; l < cache_len; ++l) {
      bool any = false;  // slots nobody attends to (masked, or underflowed to 0) are skipped, as mix_impl does
      for (int r = 0; r < rows; ++r) any |= s[r * cache_len + l] != 0.f;
      if (!any) continue;
      __m512 vc[NC];
      for (int c = 0; c < NC; ++c) vc[c] = _mm512_loadu_ps(v + l * D + 16 * c);
      for (int r = 0; r < R; ++r) {
        const float p = r < rows ? s[r * cache_len + l] : 0.f;
        if (p == 0.f) continue;
        total[r] += p;
        const __m512 pb = _mm512_set1_ps(p);
        for (int c = 0; c < NC; ++c) o[r][c] = _mm512_fmadd_ps(pb, vc[c], o[r][c]);
      }
    }
    for (int r = 0; r < rows; ++r) {
      const __m512 inv = _mm512_set1_ps(total[r] > 0.f ? 1.f / total[r] : 0.f);
      for (int c = 0; c < NC; ++c) _mm512_storeu_ps(out + (g0 + r) * D + 16 * c, _mm512_mul_ps(o[r][c], inv));
    }
  }
}
#endif

template <typename MaskT>
void attend_plain(const float* q, const float* k, const float* v, const MaskT* mask, int64_t G, int64_t cache_len,
                  int64_t D, float scale, float* out, float* s) {
  for (int64_t g = 0; g < G; ++g) {
    const float best = scores_impl(q + g * D, k, mask, cache_len, D, scale, s);
    for (int64_t l = 0; l < cache_len; ++l) s[l] = best == kNegInf ? 0.f : std::exp(s[l] - best);
    mix_impl(s, v, cache_len, D, out + g * D);
  }
}

template <typename MaskT>
void attend(bool avx512, const float* q, const float* k, const float* v, const MaskT* mask, int64_t G, int64_t cache_len,
            int64_t D, float scale, float* out, float* s) {
#if defined(__x86_64__) || defined(_M_X64)
  if (avx512 && D == 64) return attend_avx512_rows<4>(q, k, v, mask, G, cache_len, scale, out, s);
  if (avx512 && D == 128) return attend_avx512_rows<8>(q, k, v, mask, G, cache_len, scale, out, s);
  if (avx512) return attend_avx512(q, k, v, mask, G, cache_len, D, scale, out, s);
#endif
  attend_plain(q, k, v, mask, G, cache_len, D, scale, out, s);
}

// isa: 0 the best this CPU has, 1 portable, 3 AVX-512 (what LLMBIN_CPU_ISA's scalar/avx512 name elsewhere)
at::Tensor decode_attention_isa(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                const std::optional<at::Tensor>& mask_in, double scale, int64_t isa) {
  TORCH_CHECK(q_in.device().is_cpu() && q_in.scalar_type() == at::kFloat && k_in.scalar_type() == at::kFloat &&
                  v_in.scalar_type() == at::kFloat, "decode_attention takes float32 CPU tensors");
  TORCH_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.sizes() == k_in.sizes() && q_in.size(0) == k_in.size(0) &&
                  q_in.size(1) == k_in.size(1) && q_in.size(3) == k_in.size(3), "decode_attention: bad shapes");
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const int64_t B = q.size(0), H = q.size(1), G = q.size(2), D = q.size(3), cache_len = k.size(2);
  at::Tensor mask;
  if (mask_in.has_value()) {
    mask = mask_in->contiguous();
    TORCH_CHECK(mask.dim() == 4 && mask.size(1) == 1 && mask.size(2) == 1 && mask.size(3) == cache_len &&
                    (mask.size(0) == 1 || mask.size(0) == B), "decode_attention: the mask must be [B, 1, 1, cache_len]");
    TORCH_CHECK(mask.scalar_type() == at::kBool || mask.scalar_type() == at::kFloat,
                "decode_attention: the mask must be bool or float32");
  }
  at::Tensor out = at::empty_like(q);
  thread_local std::vector<float> scores;  // a head's query rows' scores
  if (static_cast<int64_t>(scores.size()) < G * cache_len) scores.resize(G * cache_len);
#if defined(__x86_64__) || defined(_M_X64)
  const bool has_avx512 = __builtin_cpu_supports("avx512f");
#else
  const bool has_avx512 = false;
#endif
  TORCH_CHECK(isa == 0 || isa == 1 || (isa == 3 && has_avx512), "decode_attention: ISA ", isa, " is not available");
  const bool avx512 = isa == 3 || (isa == 0 && has_avx512);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const float* qp = q.data_ptr<float>() + (b * H + h) * G * D;
      const float* kp = k.data_ptr<float>() + (b * H + h) * cache_len * D;
      const float* vp = v.data_ptr<float>() + (b * H + h) * cache_len * D;
      float* o = out.data_ptr<float>() + (b * H + h) * G * D;
      const int64_t mb = mask.defined() && mask.size(0) == B ? b : 0;
      if (mask.defined() && mask.scalar_type() == at::kBool)
        attend(avx512, qp, kp, vp, mask.data_ptr<bool>() + mb * cache_len, G, cache_len, D, static_cast<float>(scale), o,
               scores.data());
      else
        attend(avx512, qp, kp, vp, mask.defined() ? mask.data_ptr<float>() + mb * cache_len : nullptr, G, cache_len, D,
               static_cast<float>(scale), o, scores.data());
    }
  return out;
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& mask, double scale) {
  return decode_attention_isa(q, k, v, mask, scale, 0);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmbin_cpu, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor");
  m.def("decode_attention_isa(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale, int isa) -> Tensor");
}
TORCH_LIBRARY_IMPL(llmbin_cpu, CPU, m) {
  m.impl("decode_attention", &decode_attention);
  m.impl("decode_attention_isa", &decode_attention_isa);
}
