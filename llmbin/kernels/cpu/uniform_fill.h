// The integer-code (`uniform`) layer's weights expanded for a GEMM, from the interleaved code lines that
// uniform_kernels.h describes: int16 k-pair registers for int_gemm.h, bf16 tiles for the brgemm (dequant_gemm.h),
// float32 rows for the sgemm on CPUs without AVX512-BF16.
#pragma once

#include "uniform_kernels.h"

namespace {

#ifdef LLMBIN_X86
// Block b of row block nb as 16 int16 k-pair registers (int_gemm.h's staging): lane r of pair p holds codes
// (r, 32b + 2p) and (r, 32b + 2p + 1).
__attribute__((target("avx512f,avx512bw"))) void uniform_stage_block(const UniformLayer& L, int64_t nb, int64_t b,
                                                                    int16_t* out) {
  const uint8_t* block = L.codes + (nb * L.lines + b * L.per_block()) * 32;
  const __m512i low = _mm512_set1_epi16(15);
  const __m512i hb = L.fifth ? _mm512_loadu_si512(block + 8 * 32) : _mm512_setzero_si512();
  for (int line = 0; line < (L.nibbles ? 8 : 16); ++line) {
    const __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + line * 32)));
    if (!L.nibbles) {
      _mm512_storeu_si512(out + line * 32, w);
      continue;
    }
    __m512i lo = _mm512_and_si512(w, low), hi = _mm512_srli_epi16(w, 4);
    if (L.fifth) {
      lo = _mm512_or_si512(lo, fifth_bit512(hb, 2 * line));
      hi = _mm512_or_si512(hi, fifth_bit512(hb, 2 * line + 1));
    }
    _mm512_storeu_si512(out + (2 * line) * 32, lo);
    _mm512_storeu_si512(out + (2 * line + 1) * 32, hi);
  }
}

// One k pair of 16 rows (lane r: codes (2 pair, 2 pair + 1) as int16) as bf16 weights into a brgemm tile.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void put_pair(__m512i lanes, int64_t pair, __m512 s,
                                                                            __m512 zs, uint16_t* tile, int64_t col0,
                                                                            int64_t tile_cols) {
  alignas(64) static const uint16_t order[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512 even = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(lanes, _mm512_set1_epi32(0xFFFF))), s, zs);
  const __m512 odd = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(lanes, 16)), s, zs);
  const __m512i packed = (__m512i)_mm512_cvtne2ps_pbh(odd, even);
  _mm512_storeu_si512(tile + (pair * tile_cols + col0) * 2, _mm512_permutexvar_epi16(_mm512_load_si512(order), packed));
}

// Row block nb's weights (q * scale - zero * scale, rounded to bf16) into a brgemm tile (dequant_gemm.h's layout).
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void uniform_block_vnni(const UniformLayer& L, int64_t nb,
                                                                              int64_t col0, uint16_t* tile,
                                                                              int64_t tile_cols) {
  const __m512i low = _mm512_set1_epi16(15);
  for (int64_t g = 0; g < L.ng; ++g) {
    const __m512 s = group_scales512(L, nb, g);
    const __m512 zs = group_zscales512(L, nb, g, s);
    for (int64_t b = g * L.bpg; b < std::min(L.KB, (g + 1) * L.bpg); ++b) {
      const uint8_t* block = L.codes + (nb * L.lines + b * L.per_block()) * 32;
      const __m512i hb = L.fifth ? _mm512_loadu_si512(block + 8 * 32) : _mm512_setzero_si512();
      for (int line = 0; line < (L.nibbles ? 8 : 16); ++line) {
        const __m512i w =
            _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + line * 32)));
        if (L.nibbles) {  // pairs are numbered across blocks: block b's line q holds pairs 16b + 2q, 16b + 2q + 1
          __m512i lo = _mm512_and_si512(w, low), hi = _mm512_srli_epi16(w, 4);
          if (L.fifth) {
            lo = _mm512_or_si512(lo, fifth_bit512(hb, 2 * line));
            hi = _mm512_or_si512(hi, fifth_bit512(hb, 2 * line + 1));
          }
          put_pair(lo, 16 * b + 2 * line, s, zs, tile, col0, tile_cols);
          put_pair(hi, 16 * b + 2 * line + 1, s, zs, tile, col0, tile_cols);
        } else {
          put_pair(w, 16 * b + line, s, zs, tile, col0, tile_cols);
        }
      }
    }
  }
}
#endif

#ifdef LLMBIN_X86
// uniform_block_f32 for nibble lines on AVX2: 8 bytes of a line are 4 rows x (k 4q, 4q+1 | 4q+2, 4q+3 in the high
// nibbles); widened to int32, the low and high nibbles interleave per 64-bit pair into each row's 4 consecutive
// codes (rows r and r + 2 share a register, one per 128-bit lane), converted and scaled in 2 instructions.
// 5-bit codes: the 8 bit-line words of those 4 rows x 2 codes widen the same way and give each code its fifth bit.
__attribute__((target("avx2,fma"))) void uniform_block_f32_avx2(const UniformLayer& L, int64_t nb, int64_t col0,
                                                               float* rows, int64_t slots) {
  const uint8_t* base = L.codes + nb * L.lines * 32;
  const int64_t lpb = L.per_block();
  const __m256i low = _mm256_set1_epi32(15), one = _mm256_set1_epi32(1);
  for (int64_t g = 0; g < L.ng; ++g) {
    float sc[kRows], zs[kRows];
    for (int64_t r = 0; r < kRows; ++r) sc[r] = L.scale(nb, g, r), zs[r] = L.zscale(nb, g, r);
    __m256 s[8], z[8];  // index 2i + h: rows 4i + h (low lane) and 4i + h + 2 (high lane)
    for (int i = 0; i < 4; ++i)
      for (int h = 0; h < 2; ++h) {
        s[2 * i + h] = _mm256_setr_m128(_mm_set1_ps(sc[4 * i + h]), _mm_set1_ps(sc[4 * i + h + 2]));
        z[2 * i + h] = _mm256_setr_m128(_mm_set1_ps(zs[4 * i + h]), _mm_set1_ps(zs[4 * i + h + 2]));
      }
    for (int64_t line = g * L.bpg * 8; line < std::min(L.KB, (g + 1) * L.bpg) * 8; ++line) {
      const int64_t q = line % 8;
      const uint8_t* src = base + ((line / 8) * lpb + q) * 32;
      for (int i = 0; i < 4; ++i) {
        const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + 8 * i)));
        __m256i lo = _mm256_and_si256(v, low), hi = _mm256_srli_epi32(v, 4);
        if (L.fifth) {  // words 8i..8i+7 of the block's bit lines: the same 4 rows x 2 codes
          const __m256i words = _mm256_cvtepu16_epi32(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (8 - q) * 32 + 16 * i)));
          const __m256i b_lo = _mm256_and_si256(_mm256_srl_epi32(words, _mm_cvtsi32_si128(2 * q)), one);
          const __m256i b_hi = _mm256_and_si256(_mm256_srl_epi32(words, _mm_cvtsi32_si128(2 * q + 1)), one);
          lo = _mm256_or_si256(lo, _mm256_slli_epi32(b_lo, 4));
          hi = _mm256_or_si256(hi, _mm256_slli_epi32(b_hi, 4));
        }
        for (int h = 0; h < 2; ++h) {
          const __m256i q = h ? _mm256_unpackhi_epi64(lo, hi) : _mm256_unpacklo_epi64(lo, hi);
          const __m256 w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), s[2 * i + h], z[2 * i + h]);
          _mm_storeu_ps(rows + (col0 + 4 * i + h) * slots + line * 4, _mm256_castps256_ps128(w));
          _mm_storeu_ps(rows + (col0 + 4 * i + h + 2) * slots + line * 4, _mm256_extractf128_ps(w, 1));
        }
      }
    }
  }
}
#endif

// Row block nb as float32 rows of KB*32 values (q * scale - zero * scale; the padding past K meets zero activations)
// at rows[(col0 + r) * slots]: dequant_sgemm's fill on CPUs without AVX512-BF16. A row's codes are gathered from the
// interleaved lines a block of 32 at a time, then converted in one loop the compiler vectorizes (nibble lines on
// AVX2: the function above).
void uniform_block_f32(const UniformLayer& L, int64_t nb, int64_t col0, float* rows, int64_t slots) {
#ifdef LLMBIN_X86
  if (L.nibbles && avx2_supported()) return uniform_block_f32_avx2(L, nb, col0, rows, slots);
#endif
  uint8_t c[32];
  for (int64_t r = 0; r < kRows; ++r) {
    float* out = rows + (col0 + r) * slots;
    for (int64_t g = 0; g < L.ng; ++g) {
      const float s = L.scale(nb, g, r), zs = L.zscale(nb, g, r);
      for (int64_t b = g * L.bpg; b < std::min(L.KB, (g + 1) * L.bpg); ++b) {
        const uint8_t* block = L.codes + (nb * L.lines + b * L.per_block()) * 32;
        if (L.nibbles) {
          for (int q = 0; q < 8; ++q) {
            const uint8_t* pair = block + q * 32 + 2 * r;
            c[4 * q] = pair[0] & 15, c[4 * q + 1] = pair[1] & 15, c[4 * q + 2] = pair[0] >> 4, c[4 * q + 3] = pair[1] >> 4;
          }
          if (L.fifth)
            for (int h = 0; h < 2; ++h) {
              const uint8_t* word = block + 8 * 32 + 2 * (2 * r + h);
              const int32_t bits = word[0] | word[1] << 8;
              for (int j = 0; j < 16; ++j) c[2 * j + h] |= ((bits >> j) & 1) << 4;
            }
        } else {
          for (int j = 0; j < 16; ++j) {
            const uint8_t* pair = block + j * 32 + 2 * r;
            c[2 * j] = pair[0], c[2 * j + 1] = pair[1];
          }
        }
        float* o = out + b * 32;
        for (int k = 0; k < 32; ++k) o[k] = static_cast<float>(c[k]) * s + zs;
      }
    }
  }
}

}  // namespace
