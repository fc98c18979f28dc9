// Lookup-table GEMV/GEMM over llmbin bit planes (segments from layout.py, interleaved in __init__.py).
//
// Every 4 consecutive activations get a 16-entry table of their subset sums, so one 4-bit nibble
// of a plane row costs one lookup and one add instead of four masked adds. A table of 16 floats
// is exactly one AVX-512 register, and vpermps looks up 16 rows at once: it only reads the low
// 4 bits of each index lane, so a 32-bit word holding 32 bits of one row serves 8 lookups by
// shifting it right 4 bits each time. Rows are therefore interleaved 16 at a time, word by word.
// Tables stay float32 (T-MAC quantizes them to int8) so results are exact to fp32 rounding; the
// cost is ~10 cycles per 16 rows x 32 weights x token (permute, shift and add ports saturated).
//
// A "segment" is one bit-plane problem sharing the token's tables: the binarized channels
// (P = 1..2 planes, per-group scales, optional offsets) and, for PTQ1.61, the 4-bit salient block
// written as 4 planes with scales s*2^b and offset -z*s. Groups are padded to whole words, so a
//
// This header holds the arithmetic only; lut_plan.h repacks a layer and drives it, spin_pool.h splits one
// token's product over threads, bindings.cpp exposes both to Python and to torch.compile. The headers are
// private to bindings.cpp (one translation unit), hence the anonymous namespace.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LLMBIN_X86 1
#endif

namespace {

constexpr int64_t kRows = 16;          // rows per interleaved block = entries per lookup table
constexpr int64_t kTableFloats = 128;  // table floats per 32-bit word of activations: 8 nibbles x 16 entries

struct Segment {
  const int32_t* words;   // [NB][KW][P][16]
  const float* scales;    // [NB][ng][P][16]
  const float* offsets;   // [NB][ng][16] or nullptr
  int64_t ng, wpg, P, word0, gsum0;  // word0/gsum0: where this segment starts in the token's tables/sums
};

struct TokenBatch {
  int64_t NB, tstride;    // tstride: floats from one token's tables (and group sums) to the next's
  const float* tables;    // token t: tables + t*tstride, [words][8][16]
  const float* gsums;     // token t: gsums + t*tstride, [groups]
  float* y;               // [M][NB*16]
  bool first;             // the first segment writes y, later ones add to it
};

// ---- portable scalar path -------------------------------------------------------------------
void segment_scalar(const Segment& s, const TokenBatch& j, int64_t nb, int64_t t) {
  const int64_t KW = s.ng * s.wpg;
  const float* tab = j.tables + t * j.tstride + s.word0 * kTableFloats;
  const float* gs = j.gsums + t * j.tstride + s.gsum0;
  float* y = j.y + t * j.NB * kRows + nb * kRows;
  for (int64_t lane = 0; lane < kRows; ++lane) {
    float yl = 0.f;
    for (int64_t g = 0; g < s.ng; ++g) {
      for (int64_t p = 0; p < s.P; ++p) {
        float acc = 0.f;
        for (int64_t w = g * s.wpg; w < (g + 1) * s.wpg; ++w) {
          uint32_t bits = static_cast<uint32_t>(s.words[((nb * KW + w) * s.P + p) * kRows + lane]);
          const float* tb = tab + w * kTableFloats;
          for (int q = 0; q < 8; ++q) acc += tb[q * kRows + ((bits >> (4 * q)) & 15u)];
        }
        yl += s.scales[((nb * s.ng + g) * s.P + p) * kRows + lane] * acc;
      }
      if (s.offsets) yl += s.offsets[(nb * s.ng + g) * kRows + lane] * gs[g];
    }
    y[lane] = j.first ? yl : y[lane] + yl;
  }
}

#ifdef LLMBIN_X86
// ---- AVX-512: RB row blocks x T tokens per pass, so each table load serves RB*P lookups and
// each shifted word serves T tokens. With fewer than 4 independent sums, two accumulators hide
// the add latency. Outputs stay in registers when few, else are updated in memory per group.
template <int RB, int P, int T>
__attribute__((target("avx512f"))) void segment_avx512(const Segment& s, const TokenBatch& j, int64_t nb, int64_t t0) {
  constexpr int A = RB * P * T >= 4 ? 1 : 2;
  constexpr bool YREG = RB * T <= 4;
  const int64_t KW = s.ng * s.wpg, tstride = j.tstride, ystride = j.NB * kRows;
  const float* tab = j.tables + t0 * tstride + s.word0 * kTableFloats;
  const float* gs = j.gsums + t0 * tstride + s.gsum0;
  float* y0 = j.y + t0 * ystride + nb * kRows;
  __m512 yacc[YREG ? RB : 1][YREG ? T : 1];
  if constexpr (YREG) {
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t)
        yacc[r][t] = j.first ? _mm512_setzero_ps() : _mm512_loadu_ps(y0 + t * ystride + r * kRows);
  }
  for (int64_t g = 0; g < s.ng; ++g) {
    __m512 acc[A][RB][P][T];
#pragma GCC unroll 16
    for (int a = 0; a < A; ++a)
#pragma GCC unroll 16
      for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p)
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) acc[a][r][p][t] = _mm512_setzero_ps();
    for (int64_t w = g * s.wpg; w < (g + 1) * s.wpg; ++w) {
      __m512i wv[RB][P];
#pragma GCC unroll 16
      for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p) wv[r][p] = _mm512_loadu_si512(s.words + (((nb + r) * KW + w) * P + p) * kRows);
      // A layer row block's words are a short stream (K/32 lines per plane): too short for the hardware prefetcher
      // to catch, so fetch the next pass's lines while this one computes (+10-15% decode on SmolLM2).
      if (nb + 2 * RB <= j.NB) {
#pragma GCC unroll 16
        for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
          for (int p = 0; p < P; ++p)
            _mm_prefetch(reinterpret_cast<const char*>(s.words + (((nb + RB + r) * KW + w) * P + p) * kRows), _MM_HINT_T0);
      }
      const float* tb = tab + w * kTableFloats;
#pragma GCC unroll 8
      for (int q = 0; q < 8; ++q) {
#pragma GCC unroll 16
        for (int t = 0; t < T; ++t) {
          const __m512 tv = _mm512_loadu_ps(tb + t * tstride + q * kRows);
#pragma GCC unroll 16
          for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
            for (int p = 0; p < P; ++p)
              acc[q % A][r][p][t] = _mm512_add_ps(acc[q % A][r][p][t], _mm512_permutexvar_ps(wv[r][p], tv));
        }
#pragma GCC unroll 16
        for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
          for (int p = 0; p < P; ++p) wv[r][p] = _mm512_srli_epi32(wv[r][p], 4);
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) {
      __m512 sc[P];
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) sc[p] = _mm512_loadu_ps(s.scales + (((nb + r) * s.ng + g) * P + p) * kRows);
      const __m512 off = s.offsets ? _mm512_loadu_ps(s.offsets + ((nb + r) * s.ng + g) * kRows) : _mm512_setzero_ps();
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        __m512 v = YREG ? yacc[YREG ? r : 0][YREG ? t : 0]
                        : j.first && g == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(y0 + t * ystride + r * kRows);
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p)
          v = _mm512_fmadd_ps(sc[p], A == 2 ? _mm512_add_ps(acc[0][r][p][t], acc[A - 1][r][p][t]) : acc[0][r][p][t], v);
        if (s.offsets) v = _mm512_fmadd_ps(off, _mm512_set1_ps(gs[t * tstride + g]), v);
        if constexpr (YREG) yacc[r][t] = v; else _mm512_storeu_ps(y0 + t * ystride + r * kRows, v);
      }
    }
  }
  if constexpr (YREG) {
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) _mm512_storeu_ps(y0 + t * ystride + r * kRows, yacc[r][t]);
  }
}

// ---- AVX2: an 8-lane permute looks up 3 bits; bit 3 picks the low or high half of the table.
template <int P>
__attribute__((target("avx2,fma"))) void segment_avx2(const Segment& s, const TokenBatch& j, int64_t nb, int64_t t) {
  const int64_t KW = s.ng * s.wpg;
  const float* tab = j.tables + t * j.tstride + s.word0 * kTableFloats;
  const float* gs = j.gsums + t * j.tstride + s.gsum0;
  for (int h = 0; h < 2; ++h) {
    __m256 yacc = _mm256_setzero_ps();
    for (int64_t g = 0; g < s.ng; ++g) {
      __m256 acc[P][2];
      for (int p = 0; p < P; ++p) acc[p][0] = acc[p][1] = _mm256_setzero_ps();
      for (int64_t w = g * s.wpg; w < (g + 1) * s.wpg; ++w) {
        __m256i wv[P];
        for (int p = 0; p < P; ++p)
          wv[p] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.words + ((nb * KW + w) * P + p) * kRows + 8 * h));
        const float* tb = tab + w * kTableFloats;
#pragma GCC unroll 8
        for (int q = 0; q < 8; ++q) {
          const __m256 lo = _mm256_loadu_ps(tb + q * kRows), hi = _mm256_loadu_ps(tb + q * kRows + 8);
          for (int p = 0; p < P; ++p) {
            const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(wv[p], 28));
            const __m256 v =
                _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, wv[p]), _mm256_permutevar8x32_ps(hi, wv[p]), sel);
            acc[p][q & 1] = _mm256_add_ps(acc[p][q & 1], v);
            wv[p] = _mm256_srli_epi32(wv[p], 4);
          }
        }
      }
      for (int p = 0; p < P; ++p) {
        const __m256 sc = _mm256_loadu_ps(s.scales + ((nb * s.ng + g) * P + p) * kRows + 8 * h);
        yacc = _mm256_fmadd_ps(sc, _mm256_add_ps(acc[p][0], acc[p][1]), yacc);
      }
      if (s.offsets)
        yacc = _mm256_fmadd_ps(_mm256_loadu_ps(s.offsets + (nb * s.ng + g) * kRows + 8 * h), _mm256_set1_ps(gs[g]), yacc);
    }
    float* yp = j.y + t * j.NB * kRows + nb * kRows + 8 * h;
    _mm256_storeu_ps(yp, j.first ? yacc : _mm256_add_ps(_mm256_loadu_ps(yp), yacc));
  }
}
#endif

// kGemm, kSgemm: not ISAs of the table kernels but the many-token paths (dequant_gemm.h), forced
enum Isa : int64_t { kAuto = 0, kScalar = 1, kAvx2 = 2, kAvx512 = 3, kGemm = 4, kSgemm = 5, kIgemm = 6, kIgemm8 = 7 };

int64_t best_isa() {
#ifdef LLMBIN_X86
  if (__builtin_cpu_supports("avx512f")) return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
#endif
  return kScalar;
}

// AVX2 + FMA (every AVX-512 CPU has them): the AVX2 paths of the table, fill and integer-code kernels
bool avx2_supported() {
  static const bool ok = best_isa() >= kAvx2;
  return ok;
}

bool vnni_supported() {
#ifdef LLMBIN_X86
  static const bool ok = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
  return ok;
#else
  return false;
#endif
}

// Runs one segment over row blocks [b0, b1) for tokens [t0, t1).
void run_segment(const Segment& s, const TokenBatch& j, int64_t b0, int64_t b1, int64_t t0, int64_t t1, int64_t isa) {
#ifdef LLMBIN_X86
  if (isa == kAvx512) {
    // RB*P = 4 table reuses when one token; four tokens share each shifted word otherwise.
#define LLMBIN_P(Pc)                                                                          \
  case Pc: {                                                                                  \
    int64_t t = t0;                                                                           \
    constexpr int RB = Pc >= 4 ? 1 : 4 / Pc;                                                  \
    for (; t + 4 <= t1; t += 4) {                                                             \
      int64_t nb = b0;                                                                        \
      for (; nb + RB <= b1; nb += RB) segment_avx512<RB, Pc, 4>(s, j, nb, t);                     \
      for (; nb < b1; ++nb) segment_avx512<1, Pc, 4>(s, j, nb, t);                                \
    }                                                                                         \
    for (; t < t1; ++t) {                                                                     \
      int64_t nb = b0;                                                                        \
      for (; nb + RB <= b1; nb += RB) segment_avx512<RB, Pc, 1>(s, j, nb, t);                     \
      for (; nb < b1; ++nb) segment_avx512<1, Pc, 1>(s, j, nb, t);                                \
    }                                                                                         \
    return;                                                                                   \
  }
    switch (s.P) { LLMBIN_P(1) LLMBIN_P(2) LLMBIN_P(3) LLMBIN_P(4) default: break; }
#undef LLMBIN_P
  }
  if (isa == kAvx2) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t nb = b0; nb < b1; ++nb) {
        switch (s.P) {
          case 1: segment_avx2<1>(s, j, nb, t); break;
          case 2: segment_avx2<2>(s, j, nb, t); break;
          case 3: segment_avx2<3>(s, j, nb, t); break;
          case 4: segment_avx2<4>(s, j, nb, t); break;
          default: segment_scalar(s, j, nb, t);
        }
      }
    return;
  }
#endif
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t nb = b0; nb < b1; ++nb) segment_scalar(s, j, nb, t);
}

// Gathers (permutes, in_scales, pads) one token's activations, then builds its tables and group sums.
// Entry c of a table adds the activations of c's set bits in increasing order, on every path.
void build_scalar(const float* x, const int32_t* gidx, const float* gscale, int64_t words_per_token, const std::vector<Segment>& segs,
                  float* xb, float* tab, float* gsum) {
  for (int64_t k = 0; k < words_per_token * 32; ++k) xb[k] = gidx[k] >= 0 ? x[gidx[k]] * gscale[k] : 0.f;
  for (int64_t q = 0; q < words_per_token * 8; ++q) {
    const float* v = xb + 4 * q;
    float* t = tab + q * kRows;
    t[0] = 0.f;
    t[1] = v[0];
    for (int c = 2; c < 4; ++c) t[c] = t[c - 2] + v[1];
    for (int c = 4; c < 8; ++c) t[c] = t[c - 4] + v[2];
    for (int c = 8; c < 16; ++c) t[c] = t[c - 8] + v[3];
  }
  for (const Segment& s : segs)
    for (int64_t g = 0; g < s.ng; ++g) {
      const float* v = xb + (s.word0 + g * s.wpg) * 32;
      float acc = 0.f;
      for (int64_t k = 0; k < s.wpg * 32; ++k) acc += v[k];
      gsum[s.gsum0 + g] = acc;
    }
}

#ifdef LLMBIN_X86
__attribute__((target("avx512f"))) void build_avx512(const float* x, const int32_t* gidx, const float* gscale,
                                                     int64_t words_per_token, const std::vector<Segment>& segs, float* xb, float* tab,
                                                     float* gsum) {
  for (int64_t k = 0; k < words_per_token * 32; k += kRows) {
    const __m512i idx = _mm512_loadu_si512(gidx + k);
    const __mmask16 valid = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512());
    const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, idx, x, 4);
    _mm512_storeu_ps(xb + k, _mm512_mul_ps(v, _mm512_loadu_ps(gscale + k)));
  }
  for (int64_t q = 0; q < words_per_token * 8; ++q) {
    const float* v = xb + 4 * q;
    __m512 t = _mm512_maskz_mov_ps(0xAAAA, _mm512_set1_ps(v[0]));
    t = _mm512_mask_add_ps(t, 0xCCCC, t, _mm512_set1_ps(v[1]));
    t = _mm512_mask_add_ps(t, 0xF0F0, t, _mm512_set1_ps(v[2]));
    t = _mm512_mask_add_ps(t, 0xFF00, t, _mm512_set1_ps(v[3]));
    _mm512_storeu_ps(tab + q * kRows, t);
  }
  for (const Segment& s : segs)
    for (int64_t g = 0; g < s.ng; ++g) {
      const float* v = xb + (s.word0 + g * s.wpg) * 32;
      __m512 a0 = _mm512_loadu_ps(v), a1 = _mm512_loadu_ps(v + kRows);
      for (int64_t k = 32; k < s.wpg * 32; k += 32) {
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(v + k));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(v + k + kRows));
      }
      gsum[s.gsum0 + g] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
}
#endif

}  // namespace
