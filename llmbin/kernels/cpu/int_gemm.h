// Many-token products on AVX512-VNNI without a bf16 brgemm (AMD Zen 4/5, Ice Lake): an integer GEMM.
//
// Per call, each thread takes row blocks of 16 rows; a row block's weights are staged once as int16 k-pair lanes
// (16 rows x 2 slots per 512-bit register: what vpdpwssd multiplies), then every token of the batch runs over them:
// activations are the decode kernel's (gathered, int16 per block of 32 slots, a float scale per block), sums exact
// in int32 per block, float32 after. So the stated bound is the integer decode kernel's: per block, max|x| / 65534
// per activation times sum|w|, plus float32 rounding. Against dequantize + sgemm: no float32 copy of the layer is
// written and read back, and a vpdpwssd serves 16 rows x 2 weights x 1 token where an FMA serves 16 x 1 x 1.
//
// A layer is a list of terms: integer values (bit-plane bits 0/1, or uniform codes 0..255) over a run of whole
// blocks of slots, times a float per (group of blocks, row); plus offsets per (group, row) times the group's sum
// of activations. A bit-plane segment with P planes is P terms over the same slots; a uniform layer is one term.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <vector>

#include "lut_kernels.h"

namespace {

struct IntTerm {
  int64_t block0, blocks, bpg;  // slot blocks [block0, block0 + blocks), groups of bpg blocks
  const float* scale;           // row block nb, group g: scale + (nb * sstride + g * sgroup) .. 16 floats
  int64_t sstride, sgroup;
};

struct IntOffsets {
  int64_t block0, blocks, bpg;
  const float* offset;  // row block nb, group g: offset + (nb * ng + g) * 16
  int64_t ng;
};

// Tokens prepared for the integer products: int16 gathered activations [M][slots], per block a scale and a float sum.
struct IntTokens {
  std::vector<int16_t> xq;
  std::vector<float> xs, bsum;
  int64_t slots = 0, KB = 0;
};

inline void prepare_int_tokens(const float* x, int64_t K, int64_t M, const int32_t* gidx, const float* gscale,
                               int64_t slots, IntTokens& tok) {
  tok.slots = slots;
  tok.KB = slots / 32;
  tok.xq.resize(static_cast<size_t>(M * slots));
  tok.xs.resize(static_cast<size_t>(M * tok.KB));
  tok.bsum.resize(static_cast<size_t>(M * tok.KB));
  at::parallel_for(0, M, 8, [&](int64_t m0, int64_t m1) {
    float g[32];
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t b = 0; b < tok.KB; ++b) {
        float amax = 0.f, sum = 0.f;
        for (int j = 0; j < 32; ++j) {
          const int64_t k = b * 32 + j;
          g[j] = gidx[k] >= 0 ? x[m * K + gidx[k]] * gscale[k] : 0.f;
          amax = std::max(amax, std::fabs(g[j]));
          sum += g[j];
        }
        const float inv = amax > 0.f ? 32767.f / amax : 0.f;
        int16_t* q = tok.xq.data() + m * slots + b * 32;
        for (int j = 0; j < 32; ++j) q[j] = static_cast<int16_t>(std::nearbyint(g[j] * inv));
        tok.xs[m * tok.KB + b] = amax / 32767.f;
        tok.bsum[m * tok.KB + b] = sum;
      }
  });
}

#ifdef LLMBIN_X86
// Tokens [t0, t0 + T) x row blocks [nb, nb + RB) over one staged term: RB x T independent int32 chains (enough to
// keep vpdpwssd's pipes busy), each activation pair broadcast once for RB row blocks, each weight register loaded
// once for T tokens; a block's int32 sums scale into the float accumulators at once (scale x block scale).
template <int RB, int T>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) inline void int_term_tile(const int16_t* const* staged,
                                                                                const IntTerm& term, int64_t nb,
                                                                                const IntTokens& tok, int64_t t0,
                                                                                __m512 (&yacc)[RB][T]) {
  for (int64_t b = 0; b < term.blocks; ++b) {
    const int64_t blk = term.block0 + b;
    __m512i acc[RB][T];
    for (int r = 0; r < RB; ++r)
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_si512();
    const int32_t* x0 = reinterpret_cast<const int32_t*>(tok.xq.data() + t0 * tok.slots + blk * 32);
    const int64_t xstride = tok.slots / 2;
#pragma GCC unroll 4
    for (int p = 0; p < 16; ++p) {
      __m512i w[RB];
      for (int r = 0; r < RB; ++r) w[r] = _mm512_loadu_si512(staged[r] + (b * 16 + p) * 32);
      for (int t = 0; t < T; ++t) {
        const __m512i xp = _mm512_set1_epi32(x0[t * xstride + p]);
        for (int r = 0; r < RB; ++r) acc[r][t] = _mm512_dpwssd_epi32(acc[r][t], w[r], xp);
      }
    }
    const int64_t g = b / term.bpg;
    for (int r = 0; r < RB; ++r) {
      const __m512 s = _mm512_loadu_ps(term.scale + (nb + r) * term.sstride + g * term.sgroup);
      for (int t = 0; t < T; ++t)
        yacc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][t]),
                                     _mm512_mul_ps(s, _mm512_set1_ps(tok.xs[(t0 + t) * tok.KB + blk])), yacc[r][t]);
    }
  }
}

template <int RB, int T>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void int_rowblock_tile(
    const std::vector<const int16_t*>& staged, int64_t per_nb, const std::vector<IntTerm>& terms,
    const std::vector<IntOffsets>& offs, int64_t nb, const IntTokens& tok, int64_t t0, float* y, int64_t ldy) {
  __m512 yacc[RB][T];
  for (int r = 0; r < RB; ++r)
    for (int t = 0; t < T; ++t) yacc[r][t] = _mm512_setzero_ps();
  for (size_t i = 0; i < terms.size(); ++i) {
    const int16_t* rows[RB];
    for (int r = 0; r < RB; ++r) rows[r] = staged[i] + r * per_nb;
    int_term_tile<RB, T>(rows, terms[i], nb, tok, t0, yacc);
  }
  for (const IntOffsets& o : offs)
    for (int64_t g = 0; g < o.ng; ++g) {
      const int64_t b0 = o.block0 + g * o.bpg, b1 = o.block0 + std::min(o.blocks, (g + 1) * o.bpg);
      for (int t = 0; t < T; ++t) {
        float sum = 0.f;
        for (int64_t b = b0; b < b1; ++b) sum += tok.bsum[(t0 + t) * tok.KB + b];
        for (int r = 0; r < RB; ++r)
          yacc[r][t] = _mm512_fmadd_ps(_mm512_loadu_ps(o.offset + ((nb + r) * o.ng + g) * kRows), _mm512_set1_ps(sum),
                                       yacc[r][t]);
      }
    }
  for (int r = 0; r < RB; ++r)
    for (int t = 0; t < T; ++t) _mm512_storeu_ps(y + (t0 + t) * ldy + (nb + r) * kRows, yacc[r][t]);
}

template <int RB>
void int_rowblocks(const std::vector<const int16_t*>& staged, int64_t per_nb, const std::vector<IntTerm>& terms,
                   const std::vector<IntOffsets>& offs, int64_t nb, const IntTokens& tok, int64_t M, float* y,
                   int64_t ldy) {
  int64_t t = 0;
  for (; t + 6 <= M; t += 6) int_rowblock_tile<RB, 6>(staged, per_nb, terms, offs, nb, tok, t, y, ldy);
  for (; t + 2 <= M; t += 2) int_rowblock_tile<RB, 2>(staged, per_nb, terms, offs, nb, tok, t, y, ldy);
  if (t < M) int_rowblock_tile<RB, 1>(staged, per_nb, terms, offs, nb, tok, t, y, ldy);
}

// stage(nb, i, out): term i of row block nb as int16 k-pair lanes, terms[i].blocks * 16 registers of 32 int16.
// Threads take pairs of row blocks (the same split for any thread count: results do not depend on it).
template <typename Stage>
void int_gemm(const Stage& stage, int64_t NB, const std::vector<IntTerm>& terms, const std::vector<IntOffsets>& offs,
              const IntTokens& tok, int64_t M, float* y, int64_t ldy) {
  int64_t per_nb = 0;
  std::vector<int64_t> at_term;
  for (const IntTerm& t : terms) {
    at_term.push_back(per_nb);
    per_nb += t.blocks * 16 * 32;
  }
  at::parallel_for(0, (NB + 1) / 2, 1, [&](int64_t p0, int64_t p1) {
    std::vector<int16_t> buf(static_cast<size_t>(2 * per_nb));
    std::vector<const int16_t*> staged;
    for (int64_t a : at_term) staged.push_back(buf.data() + a);
    for (int64_t nb = 2 * p0; nb < std::min(NB, 2 * p1); nb += 2) {
      const int rb = nb + 1 < NB ? 2 : 1;
      for (int r = 0; r < rb; ++r)
        for (size_t i = 0; i < terms.size(); ++i) stage(nb + r, i, buf.data() + r * per_nb + at_term[i]);
      if (rb == 2)
        int_rowblocks<2>(staged, per_nb, terms, offs, nb, tok, M, y, ldy);
      else
        int_rowblocks<1>(staged, per_nb, terms, offs, nb, tok, M, y, ldy);
    }
  });
}

// Bit-plane staging: word w of 16 rows (one int32 per row), planes [0, P) at `first` + 16 p, as 16 k pairs: lane r of
// pair q holds row r's values at slots 2q and 2q + 1 as two int16, each sum_p bit_p << p (P = 1: the bits; planes
// whose scales are the first's times 2^p are one integer term, as a uniform layer's codes are).
__attribute__((target("avx512f,avx512bw"))) inline void stage_planes_word(const int32_t* first, int64_t P,
                                                                         int16_t* out) {
  const __m512i one = _mm512_set1_epi32(1), two = _mm512_set1_epi32(2);
  __m512i planes[8];
  for (int64_t p = 0; p < P; ++p) planes[p] = _mm512_loadu_si512(first + p * kRows);
  for (int q = 0; q < 16; ++q) {
    __m512i v = _mm512_setzero_si512();
    for (int64_t p = 0; p < P; ++p) {
      const __m512i t = _mm512_srl_epi32(planes[p], _mm_cvtsi32_si128(2 * q));
      const __m512i pair = _mm512_or_si512(_mm512_and_si512(t, one), _mm512_slli_epi32(_mm512_and_si512(t, two), 15));
      v = _mm512_or_si512(v, _mm512_sll_epi32(pair, _mm_cvtsi32_si128(static_cast<int>(p))));
    }
    _mm512_storeu_si512(out + q * 32, v);
  }
}
#endif

}  // namespace
