// float accumulators in memory (an L1-resident tile), freeing registers for larger int32 tiles
#include <immintrin.h>
#include <cstdio>
#include <cstdint>
#include <vector>
#include <ctime>
static double now(){timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
template <int RB, int T, bool TILED>
__attribute__((noinline)) void tile(const uint8_t* const* staged, int64_t b0, int64_t b1, const int32_t* xbase, int64_t slots, const float* xs, int64_t KB, const float* scale, int64_t t0, float* yt) {
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
      for (int t = 0; t < T; ++t) {
        float* q = yt + (r * T + t) * 16;
        _mm512_storeu_ps(q, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][t]), _mm512_mul_ps(s, _mm512_set1_ps(xs[(t0 + t) * KB + blk])), _mm512_loadu_ps(q)));
      }
    }
  }
}
template <int RB, int T, bool TILED>
double run(int64_t K, int64_t M, int64_t NB, int reps) {
  const int64_t KB = K / 32, slots = K;
  std::vector<int32_t> xq(M * K / 2 + 4096, 3 | (3 << 16)); std::vector<float> xs(M * KB, 1.f);
  std::vector<uint8_t> W(NB * KB * 1024, 1); std::vector<float> sc(NB * 16 * KB, 1.f);
  std::vector<float> y(M * NB * 16);
  alignas(64) float yt[RB * T * 16];
  double best = 1e9;
  const int64_t NBr = NB / RB * RB, Mr = M / T * T;
  for (int rep = 0; rep < reps; ++rep) {
    double t0 = now();
    for (int64_t nb = 0; nb < NBr; nb += RB) {
      const uint8_t* st[RB];
      for (int r = 0; r < RB; ++r) st[r] = W.data() + (nb + r) * KB * 1024;
      for (int64_t t = 0; t < Mr; t += T) {
        for (int i = 0; i < RB * T * 16; ++i) yt[i] = 0.f;
        tile<RB, T, TILED>(st, 0, KB, xq.data(), slots, xs.data(), KB, sc.data() + nb * 16 * KB, t, yt);
        for (int r = 0; r < RB; ++r) for (int u = 0; u < T; ++u) _mm512_storeu_ps(y.data() + (t + u) * NB * 16 + (nb + r) * 16, _mm512_load_ps(yt + (r * T + u) * 16));
      }
    }
    double dt = now() - t0; if (dt < best) best = dt;
  }
  const double instr = double(NBr) * 16 * Mr * K / 2 / 16;
  return instr / best / 1e9;
}
int main() {
  for (int K : {576, 1536}) {
    const int NB = K == 576 ? 120 : 36;
    printf("K=%d plain 4x3 %.2f 3x4 %.2f 4x4 %.2f 4x5 %.2f 4x6 %.2f 3x6 %.2f 5x5 %.2f 6x4 %.2f 3x8 %.2f | tiled 4x3 %.2f 3x4 %.2f 4x6 %.2f 3x8 %.2f\n", K,
      run<4,3,false>(K, 2048, NB, 5), run<3,4,false>(K, 2048, NB, 5), run<4,4,false>(K, 2048, NB, 5), run<4,5,false>(K, 2048, NB, 5), run<4,6,false>(K, 2048, NB, 5),
      run<3,6,false>(K, 2048, NB, 5), run<5,5,false>(K, 2048, NB, 5), run<6,4,false>(K, 2048, NB, 5), run<3,8,false>(K, 2048, NB, 5),
      run<4,3,true>(K, 2048, NB, 5), run<3,4,true>(K, 2048, NB, 5), run<4,6,true>(K, 2048, NB, 5), run<3,8,true>(K, 2048, NB, 5));
  }
}
