// standalone copy of int_term_tile's loop shape, to find what holds vpdpwssd at ~0.64 of peak on Zen 4
#include <immintrin.h>
#include <cstdio>
#include <cstdint>
#include <vector>
#include <ctime>
static double now(){timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#ifndef UNR
#define UNR 4
#endif
#define DO_PRAGMA(x) _Pragma(#x)
#define PRAGMA_UNROLL(n) DO_PRAGMA(GCC unroll n)
#define STR2(x) #x
#define STR(x) STR2(x)
template <int RB, int T>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) __attribute__((noinline)) void tile(const uint8_t* const* staged, int64_t b0, int64_t blocks, const int16_t* xq, int64_t slots, const float* xs, int64_t KB, const float* scale, int64_t t0, __m512 (&yacc)[RB][T]) {
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t blk = b0 + b;
    __m512i acc[RB][T];
    for (int r = 0; r < RB; ++r) for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_si512();
    const int32_t* x0 = reinterpret_cast<const int32_t*>(xq + t0 * slots + blk * 32);
    const int64_t xstride = slots / 2;
PRAGMA_UNROLL(UNR)
    for (int p = 0; p < 16; ++p) {
      __m512i w[RB];
      for (int r = 0; r < RB; ++r) w[r] = _mm512_loadu_si512(staged[r] + (b * 16 + p) * 64);
      for (int t = 0; t < T; ++t) {
        const __m512i xp = _mm512_set1_epi32(x0[t * xstride + p]);
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
template <int RB, int T>
double run(int64_t K, int64_t M, int64_t NB, int reps) {
  const int64_t KB = K / 32, slots = K;
  std::vector<int16_t> xq(M * K, 3); std::vector<float> xs(M * KB, 1.f);
  std::vector<uint8_t> W(NB * KB * 1024, 1); std::vector<float> sc(NB * 16 * KB, 1.f);
  std::vector<float> y(M * NB * 16);
  double best = 1e9;
  for (int rep = 0; rep < reps; ++rep) {
    double t0 = now();
    for (int64_t nb = 0; nb < NB; nb += RB) {
      const uint8_t* st[RB];
      for (int r = 0; r < RB; ++r) st[r] = W.data() + (nb + r) * KB * 1024;
      int64_t t = 0;
      for (; t + T <= M; t += T) {
        __m512 yacc[RB][T];
        for (int r = 0; r < RB; ++r) for (int u = 0; u < T; ++u) yacc[r][u] = _mm512_setzero_ps();
        tile<RB, T>(st, 0, KB, xq.data(), slots, xs.data(), KB, sc.data() + nb * 16 * KB, t, yacc);
        for (int r = 0; r < RB; ++r) for (int u = 0; u < T; ++u) _mm512_storeu_ps(y.data() + (t + u) * NB * 16 + (nb + r) * 16, yacc[r][u]);
      }
    }
    double dt = now() - t0; if (dt < best) best = dt;
  }
  const double instr = double(NB / RB * RB) * 16 * (M / T * T) * K / 2 / 16;  // 16 rows x 2 slots per instr
  return instr / best / 1e9;
}
int main() {
  printf("UNR %s  K=576 M=2048 NB=96: 4x3 %.2f  2x6 %.2f  3x4 %.2f G dpwssd/s\n", STR(UNR), run<4,3>(576, 2048, 96, 5), run<2,6>(576, 2048, 96, 5), run<3,4>(576, 2048, 96, 5));
  printf("          K=1536: 4x3 %.2f  2x6 %.2f\n", run<4,3>(1536, 2048, 36, 5), run<2,6>(1536, 2048, 36, 5));
  printf("          K=576 M=24 (L1-hot acts): 4x3 %.2f\n", run<4,3>(576, 24, 96, 200));
}
