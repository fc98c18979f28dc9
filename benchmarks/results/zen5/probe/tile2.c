#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static int16_t W[4][16*32*16] __attribute__((aligned(64)));  // 4 rows x 16 blocks x 16 steps x 32 int16
static int32_t X[3][16*16] __attribute__((aligned(64)));
__attribute__((target("avx512f,avx512bw,avx512vnni"))) __m512i run_mem(long reps){
  __m512i tot=_mm512_setzero_si512();
  for(long k=0;k<reps;k++) for(int b=0;b<NBLK;b++){
    __m512i acc[4][3]; for(int r=0;r<4;r++)for(int t=0;t<3;t++)acc[r][t]=_mm512_setzero_si512();
    #pragma GCC unroll 4
    for(int p=0;p<16;p++){
      __m512i w[4]; for(int r=0;r<4;r++) w[r]=_mm512_load_si512(W[r]+(b*16+p)*32);
      for(int t=0;t<3;t++){ __m512i xp=_mm512_set1_epi32(X[t][b*16+p]); for(int r=0;r<4;r++) acc[r][t]=_mm512_dpwssd_epi32(acc[r][t],w[r],xp);}
    }
    for(int r=0;r<4;r++)for(int t=0;t<3;t++) tot=_mm512_add_epi32(tot,acc[r][t]);
  }
  return tot;
}
__attribute__((target("avx512f,avx512bw,avx512vnni"))) __m512i run_perm(long reps){
  __m512i tot=_mm512_setzero_si512();
  for(long k=0;k<reps;k++) for(int b=0;b<NBLK;b++){
    __m512i acc[4][3]; for(int r=0;r<4;r++)for(int t=0;t<3;t++)acc[r][t]=_mm512_setzero_si512();
    __m512i xv[3]; for(int t=0;t<3;t++) xv[t]=_mm512_load_si512(X[t]+b*16);
    #pragma GCC unroll 16
    for(int p=0;p<16;p++){
      __m512i w[4]; for(int r=0;r<4;r++) w[r]=_mm512_load_si512(W[r]+(b*16+p)*32);
      const __m512i idx=_mm512_set1_epi32(p);
      for(int t=0;t<3;t++){ __m512i xp=_mm512_permutexvar_epi32(idx,xv[t]); for(int r=0;r<4;r++) acc[r][t]=_mm512_dpwssd_epi32(acc[r][t],w[r],xp);}
    }
    for(int r=0;r<4;r++)for(int t=0;t<3;t++) tot=_mm512_add_epi32(tot,acc[r][t]);
  }
  return tot;
}
int main(){
  long reps=200000; double t; __m512i s;
  for(int i=0;i<2;i++){
  t=now(); s=run_mem(reps); double d1=now()-t;
  t=now(); s=_mm512_add_epi32(s,run_perm(reps)); double d2=now()-t;
  double n=reps*(double)NBLK*16*12;
  printf("mem-broadcast %.2f G dp/s, permute-broadcast %.2f G dp/s (%d)\n", n/d1/1e9, n/d2/1e9, _mm512_reduce_add_epi32(s));}
}
