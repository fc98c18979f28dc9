// Integer-code (`uniform`: RTN/GPTQ, packed embeddings and heads) products on AVX512-VNNI, and on AVX2 (vpmaddwd:
// the same int16 x code pairs summed exactly in int32, 8 rows per register instead of 16).
//
// A token's activations are quantized to int16 per block of 32 (scale = max|x| / 32767: error <= max|x| / 65534 per
// activation, far below bf16's 2^-9), and vpdpwssd multiplies 16 rows x 2 codes by a broadcast activation pair per
// instruction, summing exactly in int32 (32 x 255 x 32767 < 2^31 per block). Per block the int32 sums become float
// times the block's scale, per group (minus the row's zero point times the group's float sum of x) times the row's
// scale. Scales stay the format's fp16 and zero points its uint8 (3 bytes a row and group a token reads, not 8).
// Compared with the lookup tables over bit planes this needs one instruction per 32 weights for any bit width
// instead of one per plane per 64: 4-bit layers 2x, the 5-bit head 2.5x fewer instructions.
//
// Codes, 16 rows interleaved: a 32-byte line holds, per row r, two bytes (bytes 2r, 2r+1). Up to 5 bits the bytes
// hold two codes' low 4 bits each: line q of a block of 32 columns, byte 2r+h = code(r, 4q+h) | code(r, 4q+2+h) << 4,
// so the low nibbles of a line are the k pair (4q, 4q+1) and the high ones (4q+2, 4q+3). 5-bit codes (the packed
// embedding and head) add two lines per block after its 8: 32 uint16 words, word 2r+h bit j = bit 4 of code(r, 2j+h),
// so a block costs 5 bits a code instead of a byte. From 6 bits on, a byte is one code: line j, byte 2r+h =
// code(r, 2j+h). Zero-extending a line to int16 makes each 32-bit lane one row's k pair.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "lut_kernels.h"

namespace {

struct UniformLayer {
  const uint8_t* codes;      // [NB][lines][32]
  const at::Half* scales;    // [NB][ng][16]: the checkpoint's fp16 scales, as stored
  const uint8_t* zeros;      // [NB][ng][16]: the zero points (a decode token reads 3 bytes a row and group, not 8)
  int64_t NB, KB, ng, bpg, lines;  // KB = blocks of 32 activations, bpg = blocks per group
  bool nibbles, fifth;  // nibbles: codes of up to 4 bits (or 5 with `fifth`: the bit lines after a block's 8)
  int64_t per_block() const { return nibbles ? (fifth ? 10 : 8) : 16; }  // lines per block of 32 columns
  // row r of row block nb, group g: its scale and -zero * scale (the float32 product the format's dequantize makes)
  float scale(int64_t nb, int64_t g, int64_t r) const { return static_cast<float>(scales[(nb * ng + g) * 16 + r]); }
  float zero(int64_t nb, int64_t g, int64_t r) const { return static_cast<float>(zeros[(nb * ng + g) * 16 + r]); }
  float zscale(int64_t nb, int64_t g, int64_t r) const { return -zero(nb, g, r) * scale(nb, g, r); }
};

// Code (r, k) of row block nb, as stored: the portable reading of the layout above.
inline int32_t code_at(const UniformLayer& L, int64_t nb, int64_t r, int64_t k) {
  const uint8_t* block = L.codes + (nb * L.lines + (k / 32) * L.per_block()) * 32;
  const int64_t kk = k % 32, h = kk % 2;
  if (!L.nibbles) return block[(kk / 2) * 32 + 2 * r + h];
  const uint8_t byte = block[(kk / 4) * 32 + 2 * r + h];
  int32_t c = kk % 4 < 2 ? byte & 15 : byte >> 4;
  if (L.fifth) {
    const uint8_t* word = block + 8 * 32 + 2 * (2 * r + h);
    const int32_t bits = word[0] | word[1] << 8;
    c |= ((bits >> (kk / 2)) & 1) << 4;
  }
  return c;
}

// One token: int16 activations (zero-padded to KB*32), a scale per block, a float sum per group.
void quantize_token(const float* x, int64_t K, const UniformLayer& L, int16_t* xq, float* xs, float* xsum) {
  for (int64_t b = 0; b < L.KB; ++b) {
    const int64_t k0 = b * 32, k1 = std::min(K, k0 + 32);
    float amax = 0.f;
    for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(x[k]));
    const float inv = amax > 0.f ? 32767.f / amax : 0.f;
    xs[b] = amax / 32767.f;
    for (int64_t k = k0; k < k0 + 32; ++k) xq[k] = k < k1 ? static_cast<int16_t>(std::nearbyint(x[k] * inv)) : 0;
  }
  for (int64_t g = 0; g < L.ng; ++g) {
    float sum = 0.f;
    for (int64_t k = g * L.bpg * 32; k < std::min(K, (g + 1) * L.bpg * 32); ++k) sum += x[k];
    xsum[g] = sum;
  }
}

// Portable path (and the reference the tests hold the vector path to): same arithmetic, one row at a time.
void uniform_rows_scalar(const UniformLayer& L, const int16_t* xq, const float* xs, const float* xsum, int64_t nb,
                         float* y) {
  for (int64_t r = 0; r < kRows; ++r) {
    float yr = 0.f;
    for (int64_t g = 0; g < L.ng; ++g) {
      float gr = 0.f;
      for (int64_t b = g * L.bpg; b < std::min(L.KB, (g + 1) * L.bpg); ++b) {
        int32_t acc = 0;
        for (int64_t k = b * 32; k < b * 32 + 32; ++k) acc += code_at(L, nb, r, k) * static_cast<int32_t>(xq[k]);
        gr += static_cast<float>(acc) * xs[b];
      }
      yr += (gr - L.zero(nb, g, r) * xsum[g]) * L.scale(nb, g, r);
    }
    y[r] = yr;
  }
}

#ifdef LLMBIN_X86

// The 16 rows' scales and zero points of row block nb, group g, as floats.
__attribute__((target("avx512f"))) inline __m512 group_scales512(const UniformLayer& L, int64_t nb, int64_t g) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(L.scales + (nb * L.ng + g) * kRows)));
}
__attribute__((target("avx512f"))) inline __m512 group_zeros512(const UniformLayer& L, int64_t nb, int64_t g) {
  return _mm512_cvtepi32_ps(
      _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(L.zeros + (nb * L.ng + g) * kRows))));
}
// -zero * scale of the same rows, given their scales s (the float32 product the format's dequantize makes)
__attribute__((target("avx512f"))) inline __m512 group_zscales512(const UniformLayer& L, int64_t nb, int64_t g, __m512 s) {
  return _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), group_zeros512(L, nb, g)), s);
}

// Row blocks [nb0, nb1)'s scales and -zero * scale as float32 [nb][ng][16] (the integer GEMM's terms, per call).
__attribute__((target("avx512f"))) void float_scales512(const UniformLayer& L, int64_t nb0, int64_t nb1, float* sc,
                                                        float* zs) {
  for (int64_t nb = nb0; nb < nb1; ++nb)
    for (int64_t g = 0; g < L.ng; ++g) {
      const __m512 s = group_scales512(L, nb, g);
      _mm512_storeu_ps(sc + (nb * L.ng + g) * kRows, s);
      _mm512_storeu_ps(zs + (nb * L.ng + g) * kRows, group_zscales512(L, nb, g, s));
    }
}

// Bit j of each 16-bit lane moved to bit 4 (the fifth bit of a code), everything else cleared.
__attribute__((target("avx512f,avx512bw"))) inline __m512i fifth_bit512(__m512i words, int j) {
  const __m512i t = j <= 4 ? _mm512_sll_epi16(words, _mm_cvtsi32_si128(4 - j))
                           : _mm512_srl_epi16(words, _mm_cvtsi32_si128(j - 4));
  return _mm512_and_si512(t, _mm512_set1_epi16(16));
}

// RB row blocks from nb on: RB independent int32 chains hide vpdpwssd's latency. FIFTH (5-bit codes): each nibble
// gets its fifth bit from the block's bit lines before the multiply.
template <int RB, bool NIB, bool FIFTH = false>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void uniform_rows_vnni(const UniformLayer& L, const int16_t* xq,
                                                                             const float* xs, const float* xsum,
                                                                             int64_t nb, float* y) {
  const __m512i low = _mm512_set1_epi16(15);
  const int64_t lpb = L.per_block();
  __m512 yacc[RB];
  for (int r = 0; r < RB; ++r) yacc[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < L.ng; ++g) {
    __m512 gacc[RB];
    for (int r = 0; r < RB; ++r) gacc[r] = _mm512_setzero_ps();
    for (int64_t b = g * L.bpg; b < std::min(L.KB, (g + 1) * L.bpg); ++b) {
      const int32_t* pairs = reinterpret_cast<const int32_t*>(xq + b * 32);
      __m512i acc[RB];
      for (int r = 0; r < RB; ++r) acc[r] = _mm512_setzero_si512();
      if constexpr (NIB) {
        __m512i hb[RB];
        if constexpr (FIFTH)
          for (int r = 0; r < RB; ++r) hb[r] = _mm512_loadu_si512(L.codes + ((nb + r) * L.lines + b * lpb + 8) * 32);
#pragma GCC unroll 8
        for (int q = 0; q < 8; ++q) {
          const __m512i xlo = _mm512_set1_epi32(pairs[2 * q]), xhi = _mm512_set1_epi32(pairs[2 * q + 1]);
#pragma GCC unroll 4
          for (int r = 0; r < RB; ++r) {
            const __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(L.codes + ((nb + r) * L.lines + b * lpb + q) * 32)));
            __m512i lo = _mm512_and_si512(w, low), hi = _mm512_srli_epi16(w, 4);
            if constexpr (FIFTH) {
              lo = _mm512_or_si512(lo, fifth_bit512(hb[r], 2 * q));
              hi = _mm512_or_si512(hi, fifth_bit512(hb[r], 2 * q + 1));
            }
            acc[r] = _mm512_dpwssd_epi32(acc[r], lo, xlo);
            acc[r] = _mm512_dpwssd_epi32(acc[r], hi, xhi);
          }
        }
      } else {
#pragma GCC unroll 16
        for (int j = 0; j < 16; ++j) {
          const __m512i xp = _mm512_set1_epi32(pairs[j]);
#pragma GCC unroll 4
          for (int r = 0; r < RB; ++r) {
            const __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(L.codes + ((nb + r) * L.lines + b * lpb + j) * 32)));
            acc[r] = _mm512_dpwssd_epi32(acc[r], w, xp);
          }
        }
      }
      const __m512 scale = _mm512_set1_ps(xs[b]);
      for (int r = 0; r < RB; ++r) gacc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r]), scale, gacc[r]);
    }
    const __m512 sum = _mm512_set1_ps(xsum[g]);
    for (int r = 0; r < RB; ++r)  // scale * (sum of codes x activations - zero * sum of activations)
      yacc[r] = _mm512_fmadd_ps(_mm512_fnmadd_ps(group_zeros512(L, nb + r, g), sum, gacc[r]),
                                group_scales512(L, nb + r, g), yacc[r]);
  }
  for (int r = 0; r < RB; ++r) _mm512_storeu_ps(y + r * kRows, yacc[r]);
}

// uniform_rows_vnni's arithmetic on AVX2: a line's 16 bytes of rows 0-7 and of rows 8-15 each widen to one register
// of 8 rows x a k pair, vpmaddwd multiplies it by the broadcast activation pair and sums the pair (exact: both
// products < 2^23). RB = 2 keeps the 3 x 2 x RB accumulators within AVX2's 16 registers.
__attribute__((target("avx2"))) inline __m256i fifth_bit256(__m256i words, int j) {
  const __m256i t = j <= 4 ? _mm256_sll_epi16(words, _mm_cvtsi32_si128(4 - j))
                           : _mm256_srl_epi16(words, _mm_cvtsi32_si128(j - 4));
  return _mm256_and_si256(t, _mm256_set1_epi16(16));
}

template <int RB, bool NIB, bool FIFTH = false>  // F16C: on every CPU with AVX2 and FMA
__attribute__((target("avx2,fma,f16c"))) void uniform_rows_avx2(const UniformLayer& L, const int16_t* xq, const float* xs,
                                                          const float* xsum, int64_t nb, float* y) {
  const __m256i low = _mm256_set1_epi16(15);
  const int64_t lpb = L.per_block();
  __m256 yacc[RB][2];
  for (int r = 0; r < RB; ++r) yacc[r][0] = yacc[r][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < L.ng; ++g) {
    __m256 gacc[RB][2];
    for (int r = 0; r < RB; ++r) gacc[r][0] = gacc[r][1] = _mm256_setzero_ps();
    for (int64_t b = g * L.bpg; b < std::min(L.KB, (g + 1) * L.bpg); ++b) {
      const int32_t* pairs = reinterpret_cast<const int32_t*>(xq + b * 32);
      __m256i acc[RB][2];
      for (int r = 0; r < RB; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
      if constexpr (NIB) {
#pragma GCC unroll 8
        for (int q = 0; q < 8; ++q) {
          const __m256i xlo = _mm256_set1_epi32(pairs[2 * q]), xhi = _mm256_set1_epi32(pairs[2 * q + 1]);
          for (int r = 0; r < RB; ++r)
            for (int h = 0; h < 2; ++h) {
              const uint8_t* block = L.codes + ((nb + r) * L.lines + b * lpb) * 32;
              const __m256i w =
                  _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + q * 32 + 16 * h)));
              __m256i lo = _mm256_and_si256(w, low), hi = _mm256_srli_epi16(w, 4);
              if constexpr (FIFTH) {  // rows 8h..8h+7 are words 16h..16h+15 of the bit lines
                const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 8 * 32 + 32 * h));
                lo = _mm256_or_si256(lo, fifth_bit256(hb, 2 * q));
                hi = _mm256_or_si256(hi, fifth_bit256(hb, 2 * q + 1));
              }
              acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(lo, xlo));
              acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(hi, xhi));
            }
        }
      } else {
#pragma GCC unroll 16
        for (int j = 0; j < 16; ++j) {
          const __m256i xp = _mm256_set1_epi32(pairs[j]);
          for (int r = 0; r < RB; ++r)
            for (int h = 0; h < 2; ++h) {
              const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128(
                  reinterpret_cast<const __m128i*>(L.codes + ((nb + r) * L.lines + b * lpb + j) * 32 + 16 * h)));
              acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(w, xp));
            }
        }
      }
      const __m256 scale = _mm256_set1_ps(xs[b]);
      for (int r = 0; r < RB; ++r)
        for (int h = 0; h < 2; ++h) gacc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][h]), scale, gacc[r][h]);
    }
    const __m256 sum = _mm256_set1_ps(xsum[g]);
    for (int r = 0; r < RB; ++r)
      for (int h = 0; h < 2; ++h) {
        const int64_t at = ((nb + r) * L.ng + g) * kRows + 8 * h;
        const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(L.scales + at)));
        const __m256 z = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(L.zeros + at))));
        yacc[r][h] = _mm256_fmadd_ps(_mm256_fnmadd_ps(z, sum, gacc[r][h]), s, yacc[r][h]);
      }
  }
  for (int r = 0; r < RB; ++r)
    for (int h = 0; h < 2; ++h) _mm256_storeu_ps(y + r * kRows + 8 * h, yacc[r][h]);
}
#endif

bool uniform_supported() { return vnni_supported() || avx2_supported(); }

}  // namespace
