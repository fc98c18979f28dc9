#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
__attribute__((target("avx512f,avx512bw,avx512vnni"))) int main(){
  __m512i a[12]; __m512i w=_mm512_set1_epi32(3), x=_mm512_set1_epi32(5);
  for(int i=0;i<12;i++) a[i]=_mm512_set1_epi32(i);
  long n=200000000; double t=now();
  for(long k=0;k<n;k++){
    #pragma GCC unroll 12
    for(int i=0;i<12;i++) a[i]=_mm512_dpwssd_epi32(a[i],w,x);
    __asm__ volatile("" : "+v"(w));
  }
  double dt=now()-t; int s=0; for(int i=0;i<12;i++) s+=_mm512_reduce_add_epi32(a[i]);
  printf("vpdpwssd: %.2f G/s (%d)\n", n*12/dt/1e9, s);
  // scalar add chain to estimate clock: 1 add/cycle latency
  long v=0; t=now(); for(long k=0;k<2000000000;k++){ __asm__ volatile("add $1, %0" : "+r"(v)); } dt=now()-t;
  printf("dep add chain: %.2f GHz\n", 2e9/dt);
}
