// Causal attention of many query tokens at once (scoring, prefill), grouped-query heads, float32 on AVX-512.
//
// torch's CPU flash kernel reaches about a third of this CPU's float32 FMA peak on SmolLM2's shape (4 x 512 tokens,
// 9 heads of 64, 3 KV heads: ~17.5 ms a layer on 2 Zen 4 cores, a sixth of a packed model's forward). Here the G
// query heads that share a KV head are the rows of one tile, so each key or value register loaded serves G times the
// rows; keys are transposed once per head so that one register holds 16 keys' scores of a row; and a block of query
// tokens keeps its rows' scores in a per-thread buffer for an exact two-pass softmax (no online rescaling).
//
// q [B, H, L, D] (any strides but unit stride in D), k, v [B, Hkv, L, D] (likewise), H = G Hkv, D = 64 or 128;
// out [B, L, H, D] contiguous (what transformers takes back). Query token t attends keys 0..t. Float sums run in
// another order than SDPA's, so results agree to float32 rounding, not bit for bit; they do not depend on the
// thread count (each output row is computed by one thread in one fixed order).
#include <torch/extension.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "vec_exp.h"

namespace {

constexpr int64_t kTokens = 16;  // query tokens per task (a thread's score buffer: kTokens G rows x L floats)

struct Heads {
  const float* q;
  const float* k;
  const float* v;
  int64_t qs[3], ks[3], vs[3];  // strides of b, h, t (d is 1)
  int64_t B, H, Hkv, G, L, D;
};

#if defined(__x86_64__) || defined(_M_X64)
// One task: query tokens [t0, t0 + n) of KV head (b, hk), all G heads that share it, as rows (t - t0) G + g.
// kt: that head's keys transposed, [D][ldk] with ldk >= the keys scored (a multiple of 32; padding is finite).
template <int NC>
__attribute__((target("avx512f,fma"))) void attend_tokens(const Heads& a, int64_t b, int64_t hk, int64_t t0,
                                                          int64_t n, const float* kt, int64_t ldk, float scale,
                                                          float* s, float* out) {
  constexpr int64_t D = 16 * NC;
  const int64_t G = a.G, rows = n * G;
  const int64_t keys = t0 + n, ld = (keys + 31) / 32 * 32;  // keys scored, padded to whole tiles of 32
  std::vector<const float*> qrow(rows);
  for (int64_t r = 0; r < rows; ++r)
    qrow[r] = a.q + b * a.qs[0] + (hk * G + r % G) * a.qs[1] + (t0 + r / G) * a.qs[2];
  // scores: 8 rows x 32 keys a tile (16 accumulators), each key register serving 8 rows
  constexpr int R = 8;
  for (int64_t r0 = 0; r0 < rows; r0 += R) {
    const float* qr[R];
    for (int r = 0; r < R; ++r) qr[r] = qrow[std::min<int64_t>(r0 + r, rows - 1)];  // past the end: repeats, unstored
    for (int64_t j0 = 0; j0 < ld; j0 += 32) {
      __m512 acc[R][2];
      for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
      const float* kp = kt + j0;
      for (int64_t d = 0; d < D; ++d) {
        const __m512 k0 = _mm512_loadu_ps(kp + d * ldk), k1 = _mm512_loadu_ps(kp + d * ldk + 16);
        for (int r = 0; r < R; ++r) {
          const __m512 x = _mm512_set1_ps(qr[r][d]);
          acc[r][0] = _mm512_fmadd_ps(x, k0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(x, k1, acc[r][1]);
        }
      }
      const __m512 sc = _mm512_set1_ps(scale);
      for (int r = 0; r < R && r0 + r < rows; ++r) {
        _mm512_storeu_ps(s + (r0 + r) * ld + j0, _mm512_mul_ps(acc[r][0], sc));
        _mm512_storeu_ps(s + (r0 + r) * ld + j0 + 16, _mm512_mul_ps(acc[r][1], sc));
      }
    }
  }
  // softmax numerators in place: keys after the row's token are -inf, so their exponentials are 0
  std::vector<float> inv(rows);
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * ld;
    const int64_t last = t0 + r / G;  // the last key this row attends
    for (int64_t j = last + 1; j < ld; ++j) sr[j] = -std::numeric_limits<float>::infinity();
    __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < ld; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(sr + j));
    const __m512 best = _mm512_set1_ps(_mm512_reduce_max_ps(m));
    __m512 tot = _mm512_setzero_ps();
    for (int64_t j = 0; j < ld; j += 16) {
      const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(sr + j), best));
      _mm512_storeu_ps(sr + j, e);
      tot = _mm512_add_ps(tot, e);
    }
    inv[r] = 1.f / _mm512_reduce_add_ps(tot);
  }
  // out = p v / sum p: R2 rows x D a tile in registers, each value register serving R2 rows. The tile's p go to a
  // [key][R2] buffer first: broadcasts at constant offsets from one pointer (with a pointer per row and a store loop
  // bounded at run time, GCC stored every accumulator to the stack each key: ~3x slower)
  constexpr int R2 = 24 / NC;
  const float* vh = a.v + b * a.vs[0] + hk * a.vs[1];
  std::vector<float> pt(static_cast<size_t>(R2 * ld));
  for (int64_t r0 = 0; r0 < rows; r0 += R2) {
    const int live = static_cast<int>(std::min<int64_t>(R2, rows - r0));
    const int64_t end = t0 + (r0 + live - 1) / G + 1;  // keys any of these rows attends
    for (int r = 0; r < R2; ++r) {
      const float* sr = s + (r0 + std::min(r, live - 1)) * ld;  // past the end: repeats, unstored
      for (int64_t j = 0; j < end; ++j) pt[j * R2 + r] = sr[j];
    }
    __m512 acc[R2][NC];
    for (int r = 0; r < R2; ++r)
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_setzero_ps();
    const float* pj = pt.data();
    for (int64_t j = 0; j < end; ++j, pj += R2) {
      __m512 vc[NC];
      for (int c = 0; c < NC; ++c) vc[c] = _mm512_loadu_ps(vh + j * a.vs[2] + 16 * c);
      for (int r = 0; r < R2; ++r) {
        const __m512 p = _mm512_set1_ps(pj[r]);
        for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_fmadd_ps(p, vc[c], acc[r][c]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R2; ++r) {
      if (r >= live) break;
      const int64_t row = r0 + r, t = t0 + row / G, h = hk * G + row % G;
      float* o = out + ((b * a.L + t) * a.H + h) * D;
      const __m512 w = _mm512_set1_ps(inv[row]);
      for (int c = 0; c < NC; ++c) _mm512_storeu_ps(o + 16 * c, _mm512_mul_ps(acc[r][c], w));
    }
  }
}
#endif

// What the tiles are written for; which lengths are worth it is kernels/ops.py's choice.
bool prefill_attention_supported(int64_t head_dim) {
#if defined(__x86_64__) || defined(_M_X64)
  return __builtin_cpu_supports("avx512f") && (head_dim == 64 || head_dim == 128);
#else
  return false;
#endif
}

at::Tensor prefill_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  TORCH_CHECK(q.device().is_cpu() && q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat &&
                  v.scalar_type() == at::kFloat, "prefill_attention takes float32 CPU tensors");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes() && q.size(0) == k.size(0) &&
                  q.size(2) == k.size(2) && q.size(3) == k.size(3) && k.size(1) > 0 && q.size(1) % k.size(1) == 0,
              "prefill_attention: q [B, H, L, D], k and v [B, Hkv, L, D] with H a multiple of Hkv");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "prefill_attention: D must be contiguous");
  const int64_t B = q.size(0), H = q.size(1), Hkv = k.size(1), L = q.size(2), D = q.size(3);
  TORCH_CHECK(prefill_attention_supported(D), "prefill_attention: needs AVX-512 and head dim 64 or 128");
  Heads a{q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
          {q.stride(0), q.stride(1), q.stride(2)}, {k.stride(0), k.stride(1), k.stride(2)},
          {v.stride(0), v.stride(1), v.stride(2)}, B, H, Hkv, H / Hkv, L, D};
  at::Tensor out = at::empty({B, L, H, D}, q.options());
#if defined(__x86_64__) || defined(_M_X64)
  // keys transposed per KV head: [B Hkv][D][ldk], zero padding
  const int64_t ldk = (L + 31) / 32 * 32;
  std::vector<float> kt(static_cast<size_t>(B * Hkv * D * ldk), 0.f);
  at::parallel_for(0, B * Hkv, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* src = a.k + (i / Hkv) * a.ks[0] + (i % Hkv) * a.ks[1];
      float* dst = kt.data() + i * D * ldk;
      for (int64_t t = 0; t < L; ++t)
        for (int64_t d = 0; d < D; ++d) dst[d * ldk + t] = src[t * a.ks[2] + d];
    }
  });
  // tasks (b, hk, token block), the longest (last) blocks first, handed out one at a time: a block's cost grows
  // with its position, so a static split would leave one thread the long ones
  const int64_t blocks = (L + kTokens - 1) / kTokens, tasks = B * Hkv * blocks;
  std::atomic<int64_t> next{0};
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks));
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    std::vector<float> s(static_cast<size_t>(kTokens * a.G * (ldk + 32)));
    for (int64_t i = next++; i < tasks; i = next++) {
      const int64_t blk = blocks - 1 - i / (B * Hkv), bh = i % (B * Hkv);
      const int64_t t0 = blk * kTokens, n = std::min(kTokens, L - t0);
      const float* kth = kt.data() + bh * D * ldk;
      if (D == 64)
        attend_tokens<4>(a, bh / Hkv, bh % Hkv, t0, n, kth, ldk, static_cast<float>(scale), s.data(),
                         out.data_ptr<float>());
      else
        attend_tokens<8>(a, bh / Hkv, bh % Hkv, t0, n, kth, ldk, static_cast<float>(scale), s.data(),
                         out.data_ptr<float>());
    }
  });
#endif
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmbin_cpu, m) {
  m.def("prefill_attention(Tensor q, Tensor k, Tensor v, float scale) -> Tensor");
}
TORCH_LIBRARY_IMPL(llmbin_cpu, CPU, m) { m.impl("prefill_attention", &prefill_attention); }
