// variants: activations laid out per token tile (a tile's T tokens' pairs side by side), and K chunks (weights L1-sized)
#include <immintrin.h>
#include <cstdio>
#include <cstdint>
#include <vector>
#include <ctime>
static double now(){timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
template <int RB, int T, bool TILED>
__attribute__((noinline)) void tile(const uint8_t* const* staged, int64_t b0, int64_t b1, const int32_t* xbase, int64_t slots, const float* xs, int64_t KB, const float* scale, int64_t t0, __m512 (&yacc)[RB][T]) {
  for (int64_t blk = b0; blk < b1; ++blk) {
    __m512i acc[RB][T];
    for (int r = 0; r < RB; ++r) for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_si512();
    const int32_t* x0 = TILED ? xbase + (t0 / T * KB + blk) * 16 * T : xbase + t0 * (slots / 2) + blk * 16;
#pragma GCC unroll 16
    for (int p = 0; p < 16; ++p) {
      __m512i w[RB];
      for (int r = 0; r < RB; ++r) w[r] = _mm512_loadu_si512(staged[r] + (blk * 16 + p) * 64);
      for (int t = 0; t < T; ++t) {
        const __m512i xp = _mm512_set1_epi32(TILED ? x0[p * T + t] : x0[t * (slots / 2) + p]);
        for (int r = 0; r < RB; ++r) acc[r][t] = _mm512_dpwssd_epi32(acc[r][t], w[r], xp);
      }
    }
    for (int r = 0; r < RB; ++r) {
      const __m512 s = _mm512_loadu_ps(scale + r * 16 * KB + blk * 16);
      for (int t = 0; t < T; ++t)
        yacc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][t]), _mm512_mul_ps(s, _mm512_set1_ps(xs[(t0 + t) * KB + blk])), yacc[r][t]);
    }
  }
}
template <int RB, int T, bool TILED>
double run(int64_t K, int64_t M, int64_t NB, int64_t KC, int reps) {
  const int64_t KB = K / 32, slots = K;
  std::vector<int32_t> xq(M * K / 2, 3 | (3 << 16)); std::vector<float> xs(M * KB, 1.f);
  std::vector<uint8_t> W(NB * KB * 1024, 1); std::vector<float> sc(NB * 16 * KB, 1.f);
  std::vector<float> y(M * NB * 16);
  double best = 1e9;
  for (int rep = 0; rep < reps; ++rep) {
    double t0 = now();
    for (int64_t nb = 0; nb < NB; nb += RB) {
      const uint8_t* st[RB];
      for (int r = 0; r < RB; ++r) st[r] = W.data() + (nb + r) * KB * 1024;
      for (int64_t k0 = 0; k0 < KB; k0 += KC) {
        const int64_t k1 = std::min(KB, k0 + KC);
        for (int64_t t = 0; t + T <= M; t += T) {
          __m512 yacc[RB][T];
          for (int r = 0; r < RB; ++r) for (int u = 0; u < T; ++u)
            yacc[r][u] = k0 ? _mm512_loadu_ps(y.data() + (t + u) * NB * 16 + (nb + r) * 16) : _mm512_setzero_ps();
          tile<RB, T, TILED>(st, k0, k1, xq.data(), slots, xs.data(), KB, sc.data() + nb * 16 * KB, t, yacc);
          for (int r = 0; r < RB; ++r) for (int u = 0; u < T; ++u) _mm512_storeu_ps(y.data() + (t + u) * NB * 16 + (nb + r) * 16, yacc[r][u]);
        }
      }
    }
    double dt = now() - t0; if (dt < best) best = dt;
  }
  const double instr = double(NB / RB * RB) * 16 * (M / T * T) * K / 2 / 16;
  return instr / best / 1e9;
}
int main() {
  for (int K : {576, 1536}) {
    const int NB = K == 576 ? 96 : 36;
    printf("K=%d  plain: 4x3 %.2f | tiled: 4x3 %.2f 3x4 %.2f 2x6 %.2f | tiled+KC6: 4x3 %.2f 3x4 %.2f 2x6 %.2f | tiled+KC8 4x3 %.2f | plain+KC6 4x3 %.2f\n", K,
      run<4,3,false>(K, 2048, NB, 1 << 20, 5), run<4,3,true>(K, 2048, NB, 1 << 20, 5), run<3,4,true>(K, 2048, NB, 1 << 20, 5), run<2,6,true>(K, 2048, NB, 1 << 20, 5),
      run<4,3,true>(K, 2048, NB, 6, 5), run<3,4,true>(K, 2048, NB, 6, 5), run<2,6,true>(K, 2048, NB, 6, 5), run<4,3,true>(K, 2048, NB, 8, 5), run<4,3,false>(K, 2048, NB, 6, 5));
  }
}
