#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
__attribute__((target("avx512f,avx512bw,avx512vnni,avx512vl,avx512bf16"))) int main(){
  __m512i a[12]; __m512i w=_mm512_set1_epi32(3), x=_mm512_set1_epi32(5);
  for(int i=0;i<12;i++) a[i]=_mm512_set1_epi32(i);
  long N=200000000;
  for (int rep=0; rep<3; rep++){
  double t=now();
  for(long n=0;n<N;n++){
    for(int i=0;i<12;i++) a[i]=_mm512_dpwssd_epi32(a[i],w,x);
    __asm__ volatile("" : "+v"(w));
  }
  double dt=now()-t;
  int s=0; for(int i=0;i<12;i++) s+=_mm512_reduce_add_epi32(a[i]);
  printf("vpdpwssd zmm: %.2f G/s (%d)\n", N*12/dt/1e9, s);
  __m512 f[12]; __m512 fw=_mm512_set1_ps(1.0001f), fx=_mm512_set1_ps(0.999f);
  for(int i=0;i<12;i++) f[i]=_mm512_set1_ps(i);
  t=now();
  for(long n=0;n<N;n++){
    for(int i=0;i<12;i++) f[i]=_mm512_fmadd_ps(f[i],fw,fx);
    __asm__ volatile("" : "+v"(fw));
  }
  dt=now()-t; float fs=0; for(int i=0;i<12;i++) fs+=_mm512_reduce_add_ps(f[i]);
  printf("vfmadd zmm: %.2f G/s (%f)\n", N*12/dt/1e9, fs);
  __m512i b[12];
  for(int i=0;i<12;i++) b[i]=_mm512_set1_epi32(i);
  t=now();
  for(long n=0;n<N;n++){
    for(int i=0;i<12;i++) b[i]=_mm512_dpbusd_epi32(b[i],w,x);
    __asm__ volatile("" : "+v"(w));
  }
  dt=now()-t; s=0; for(int i=0;i<12;i++) s+=_mm512_reduce_add_epi32(b[i]);
  printf("vpdpbusd zmm: %.2f G/s (%d)\n", N*12/dt/1e9, s);
  __m256i c[12]; __m256i w2=_mm256_set1_epi32(3), x2=_mm256_set1_epi32(5);
  for(int i=0;i<12;i++) c[i]=_mm256_set1_epi32(i);
  t=now();
  for(long n=0;n<N;n++){
    for(int i=0;i<12;i++) c[i]=_mm256_dpwssd_epi32(c[i],w2,x2);
    __asm__ volatile("" : "+v"(w2));
  }
  dt=now()-t; s=0; for(int i=0;i<12;i++) s+=_mm256_extract_epi32(c[i],0);
  printf("vpdpwssd ymm: %.2f G/s (%d)\n", N*12/dt/1e9, s);
  __m512 d[12]; __m512bh bw=(__m512bh)_mm512_set1_epi32(0x3f803f80), bx=bw;
  for(int i=0;i<12;i++) d[i]=_mm512_set1_ps(i);
  t=now();
  for(long n=0;n<N;n++){
    for(int i=0;i<12;i++) d[i]=_mm512_dpbf16_ps(d[i],bw,bx);
    __asm__ volatile("" : "+v"(bw));
  }
  dt=now()-t; fs=0; for(int i=0;i<12;i++) fs+=_mm512_reduce_add_ps(d[i]);
  printf("vdpbf16ps zmm: %.2f G/s (%f)\n", N*12/dt/1e9, fs);
  }
}
