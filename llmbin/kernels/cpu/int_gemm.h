// Many-token products on AVX512-VNNI without a bf16 brgemm (AMD Zen 4/5, Ice Lake): an integer GEMM.
//
// Per call, each thread takes row blocks of 16 rows; a row block's weights are staged once as int16 k-pair lanes
// (16 rows x 2 slots per 512-bit register: what vpdpwssd multiplies), then every token of the batch runs over them:
// activations are gathered as the decode kernel's, rounded to int16 with a float scale per span of gemm_span()
// blocks of 32 slots (the decode kernel: per block), sums exact in int32 per span, float32 after. So the stated bound
// is per span: max|x| of the span / 65534 per activation times sum|w|, plus float32 rounding. Against dequantize +
// sgemm: no float32 copy of the layer is written and read back, and a vpdpwssd serves 16 rows x 2 weights x 1 token where an FMA serves 16 x 1 x 1.
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
#include <type_traits>
#include <vector>

#include "lut_kernels.h"

namespace {

// The auto path's activations: int16 (the decode kernel's rounding, |error| <= max|x| / 65534 per activation) or
// int8 (twice the products per instruction, max|x| / 254). Forced ISAs igemm / igemm8 pick one regardless.
// kBinarizedInt8, the default: int8 only on the binarized channels of a layer that keeps its outlier input channels
// apart (PTQ1.61's salient block, chosen by max |x|), int16 on that block and on every other layer. Those blocks
// hold no outliers, so int8 there costs little (SmolLM2's ptq161 checkpoint, valid_xsum 32 x 512: 545.265 ->
// 545.327, where int8 throughout gives 557.335) and the products run ~1.15x faster on Zen 4.
enum class IntRounding { kInt16, kBinarizedInt8, kInt8 };
inline IntRounding& int_gemm_rounding() {
  static IntRounding r = IntRounding::kBinarizedInt8;
  return r;
}

// Blocks of 32 slots that share one activation scale (the max |x| of the span): the GEMM sums a span in int32 and
// converts it to float once, where a scale per block cost a conversion, a multiply and an FMA per block (a fifth of
// the vector instructions of a binarized layer). Spans of 4 (128 slots): SmolLM2 pp64 1.09x (ptq161) and 1.11x
// (GPTQ-4) against spans of 1, valid_xsum perplexity unchanged to 0.03 % (benchmarks/results/zen4-layer-ops/).
// LLMBIN_CPU_GEMM_SPAN sets it, 1..kMaxSpan (1: a scale per block): int16 sums of 8 blocks stay within int32 for
// codes up to 255 (256 x 32767 x 255 < 2^31), of 16 they would not.
constexpr int64_t kMaxSpan = 8;
inline int64_t& gemm_span() {
  static int64_t s = 4;
  return s;
}

struct IntTerm {
  int64_t block0, blocks, bpg;  // slot blocks [block0, block0 + blocks), groups of bpg blocks
  const float* scale;           // row block nb, group g: scale + (nb * sstride + g * sgroup) .. 16 floats
  int64_t sstride, sgroup;
  bool q8 = false;              // its blocks' activations are int8 (the tokens prepared so)
};

struct IntOffsets {
  int64_t block0, blocks, bpg;
  const float* offset;  // row block nb, group g: offset + (nb * ng + g) * 16
  int64_t ng;
};

// Tokens prepared for the integer products: gathered activations [M][slots] as int16, or int8 (Q8) in the first
// q8_blocks blocks, per block a scale and a float sum.
struct IntTokens {
  std::vector<int16_t> xq;
  std::vector<int8_t> xq8;
  std::vector<float> xs, bsum;
  int64_t slots = 0, KB = 0, q8_blocks = 0;
  int64_t span = 1;  // blocks per activation scale (gemm_span() when prepared)
  // the end of the span that block b is in: spans of the int8 blocks from 0, of the int16 blocks from q8_blocks
  int64_t span_end(int64_t b) const {
    return b < q8_blocks ? std::min(q8_blocks, (b / span + 1) * span)
                         : std::min(KB, q8_blocks + ((b - q8_blocks) / span + 1) * span);
  }
};

#ifdef LLMBIN_X86
// One token's block of 32 slots gathered (gidx < 0: padding, 0) and times gscale: its max |x| and float sum.
__attribute__((target("avx512f,avx512bw"))) inline float gather_block_avx512(const float* xm, const int32_t* gidx,
                                                                            const float* gscale, __m512 (&v)[2],
                                                                            float* sum) {
  for (int h = 0; h < 2; ++h) {
    const __m512i idx = _mm512_loadu_si512(gidx + 16 * h);
    const __mmask16 valid = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512());
    v[h] = _mm512_mul_ps(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, idx, xm, 4),
                         _mm512_loadu_ps(gscale + 16 * h));
  }
  *sum = _mm512_reduce_add_ps(_mm512_add_ps(v[0], v[1]));
  return _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
}

// The block scaled so that `amax` is `top`, rounded to nearest even (quantize_token's rounding for the decode kernel)
__attribute__((target("avx512f,avx512bw"))) inline void round_block_avx512(const __m512 (&v)[2], float amax, float top,
                                                                          int16_t* q16, int8_t* q8, float* scale) {
  *scale = amax / top;
  const __m512 inv = _mm512_set1_ps(amax > 0.f ? top / amax : 0.f);
  for (int h = 0; h < 2; ++h) {
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v[h], inv));
    if (q8) _mm_storeu_si128(reinterpret_cast<__m128i*>(q8 + 16 * h), _mm512_cvtepi32_epi8(q));
    else _mm256_storeu_si256(reinterpret_cast<__m256i*>(q16 + 16 * h), _mm512_cvtepi32_epi16(q));
  }
}

// One block rounded on its own max |x| (the decode kernel's int16 activations), with its scale and float sum
__attribute__((target("avx512f,avx512bw"))) inline void quantize_block_avx512(const float* xm, const int32_t* gidx,
                                                                             const float* gscale, float top,
                                                                             int16_t* q16, int8_t* q8, float* scale,
                                                                             float* sum) {
  __m512 v[2];
  round_block_avx512(v, gather_block_avx512(xm, gidx, gscale, v, sum), top, q16, q8, scale);
}

// Vectorized because at 64 tokens a scalar loop here cost as much as the products of a 576 x 576 layer.
// q8_blocks: the leading blocks rounded to int8 (0: none, slots / 32: all); blocks share a scale in spans of
// gemm_span() (int8 spans counted from block 0, int16 ones from q8_blocks).
inline void prepare_int_tokens(const float* x, int64_t K, int64_t M, const int32_t* gidx, const float* gscale,
                               int64_t slots, IntTokens& tok, int64_t q8_blocks = 0) {
  tok.slots = slots;
  tok.KB = slots / 32;
  tok.q8_blocks = q8_blocks;
  tok.span = gemm_span();  // 1..kMaxSpan (set_gemm_span checks)
  if (q8_blocks > 0) tok.xq8.resize(static_cast<size_t>(M * slots));
  if (q8_blocks < tok.KB) tok.xq.resize(static_cast<size_t>(M * slots));
  tok.xs.resize(static_cast<size_t>(M * tok.KB));
  tok.bsum.resize(static_cast<size_t>(M * tok.KB));
  at::parallel_for(0, M, 8, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* xm = x + m * K;
      for (int64_t b0 = 0; b0 < tok.KB;) {
        const int64_t n = tok.span_end(b0) - b0;
        const bool q8 = b0 < q8_blocks;
        __m512 v[kMaxSpan][2];
        float amax = 0.f;
        for (int64_t j = 0; j < n; ++j)
          amax = std::max(amax, gather_block_avx512(xm, gidx + (b0 + j) * 32, gscale + (b0 + j) * 32, v[j],
                                                    &tok.bsum[m * tok.KB + b0 + j]));
        for (int64_t j = 0; j < n; ++j)
          round_block_avx512(v[j], amax, q8 ? 127.f : 32767.f, q8 ? nullptr : tok.xq.data() + m * slots + (b0 + j) * 32,
                             q8 ? tok.xq8.data() + m * slots + (b0 + j) * 32 : nullptr, &tok.xs[m * tok.KB + b0 + j]);
        b0 += n;
      }
    }
  });
}

// Tokens [t0, t0 + T) x row blocks [nb, nb + RB) over one staged term: RB x T independent int32 chains (enough to
// keep vpdpwssd's pipes busy), each activation pair broadcast once for RB row blocks, each weight register loaded
// once for T tokens; a block's int32 sums scale into the float accumulators at once (scale x block scale).
// Q8: int8 activations and uint8 weights as k quads (vpdpbusd: 16 rows x 4 slots per register, half the registers).
template <int RB, int T, bool Q8>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) inline void int_term_tile(const uint8_t* const* staged,
                                                                                const IntTerm& term, int64_t nb,
                                                                                const IntTokens& tok, int64_t t0,
                                                                                __m512 (&yacc)[RB][T]) {
  constexpr int kSteps = Q8 ? 8 : 16;  // registers per block of 32 slots
  // runs of blocks summed in int32 before one conversion: the blocks of one activation span (shared scale) within
  // one group of weight scales
  for (int64_t b = 0; b < term.blocks;) {
    const int64_t blk0 = term.block0 + b, g = b / term.bpg;
    const int64_t run = std::min({tok.span_end(blk0) - blk0, term.blocks - b, (g + 1) * term.bpg - b});
    __m512i acc[RB][T];
    for (int r = 0; r < RB; ++r)
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_si512();
    for (int64_t j = 0; j < run; ++j) {
      const int64_t blk = blk0 + j;
      const int32_t* x0 = Q8 ? reinterpret_cast<const int32_t*>(tok.xq8.data() + t0 * tok.slots + blk * 32)
                             : reinterpret_cast<const int32_t*>(tok.xq.data() + t0 * tok.slots + blk * 32);
      const int64_t xstride = tok.slots / (Q8 ? 4 : 2);
#pragma GCC unroll 4
      for (int p = 0; p < kSteps; ++p) {
        __m512i w[RB];
        for (int r = 0; r < RB; ++r) w[r] = _mm512_loadu_si512(staged[r] + ((b + j) * kSteps + p) * 64);
        for (int t = 0; t < T; ++t) {
          const __m512i xp = _mm512_set1_epi32(x0[t * xstride + p]);
          for (int r = 0; r < RB; ++r)
            acc[r][t] = Q8 ? _mm512_dpbusd_epi32(acc[r][t], w[r], xp) : _mm512_dpwssd_epi32(acc[r][t], w[r], xp);
        }
      }
    }
    for (int r = 0; r < RB; ++r) {
      const __m512 s = _mm512_loadu_ps(term.scale + (nb + r) * term.sstride + g * term.sgroup);
      for (int t = 0; t < T; ++t)
        yacc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][t]),
                                     _mm512_mul_ps(s, _mm512_set1_ps(tok.xs[(t0 + t) * tok.KB + blk0])), yacc[r][t]);
    }
    b += run;
  }
}

template <int RB, int T>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void int_rowblock_tile(
    const std::vector<const uint8_t*>& staged, int64_t per_nb, const std::vector<IntTerm>& terms,
    const std::vector<IntOffsets>& offs, int64_t nb, const IntTokens& tok, int64_t t0, float* y, int64_t ldy) {
  __m512 yacc[RB][T];
  for (int r = 0; r < RB; ++r)
    for (int t = 0; t < T; ++t) yacc[r][t] = _mm512_setzero_ps();
  for (size_t i = 0; i < terms.size(); ++i) {
    const uint8_t* rows[RB];
    for (int r = 0; r < RB; ++r) rows[r] = staged[i] + r * per_nb;
    if (terms[i].q8) int_term_tile<RB, T, true>(rows, terms[i], nb, tok, t0, yacc);
    else int_term_tile<RB, T, false>(rows, terms[i], nb, tok, t0, yacc);
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
void int_rowblocks(const std::vector<const uint8_t*>& staged, int64_t per_nb, const std::vector<IntTerm>& terms,
                   const std::vector<IntOffsets>& offs, int64_t nb, const IntTokens& tok, int64_t M, float* y,
                   int64_t ldy) {
  constexpr int T = RB == 4 ? 3 : RB == 3 ? 4 : 6;  // RB x T int32 and float accumulators within the 32 registers
  int64_t t = 0;
  for (; t + T <= M; t += T) int_rowblock_tile<RB, T>(staged, per_nb, terms, offs, nb, tok, t, y, ldy);
  for (; t + 2 <= M; t += 2) int_rowblock_tile<RB, 2>(staged, per_nb, terms, offs, nb, tok, t, y, ldy);
  if (t < M) int_rowblock_tile<RB, 1>(staged, per_nb, terms, offs, nb, tok, t, y, ldy);
}

// k pairs (16 int16 pairs per register, values <= 255) to k quads of bytes: lane r of quad j = pairs 2j and 2j + 1.
__attribute__((target("avx512f,avx512bw"))) inline void quads_from_pairs(const int16_t* pairs, int64_t quads,
                                                                        uint8_t* out) {
  for (int64_t j = 0; j < quads; ++j) {
    const __m512i a = _mm512_cvtepu16_epi32(_mm512_cvtepi16_epi8(_mm512_loadu_si512(pairs + (2 * j) * 32)));
    const __m512i b = _mm512_cvtepu16_epi32(_mm512_cvtepi16_epi8(_mm512_loadu_si512(pairs + (2 * j + 1) * 32)));
    _mm512_storeu_si512(out + j * 64, _mm512_or_si512(a, _mm512_slli_epi32(b, 16)));
  }
}

// Row blocks staged and run together: 4 x 3 tokens (12 int32 + 12 float accumulators) measured fastest on Zen 5,
// ahead of 2 x 6 (each activation broadcast serves more rows) and 6 x 2.
constexpr int64_t kIntRB = 4;

// stage(nb, i, out): term i of row block nb as int16 k-pair lanes, terms[i].blocks * 16 registers of 32 int16.
// A q8 term (its blocks' tokens prepared as int8) is staged so, then as byte quads. Each row block's sums are the
// same whichever thread and whichever company of row blocks it runs in: results do not depend on the thread count.
template <typename Stage>
void int_gemm(const Stage& stage, int64_t NB, const std::vector<IntTerm>& terms, const std::vector<IntOffsets>& offs,
              const IntTokens& tok, int64_t M, float* y, int64_t ldy) {
  int64_t per_nb = 0, most = 0;
  std::vector<int64_t> at_term;
  for (const IntTerm& t : terms) {
    TORCH_CHECK(t.q8 == (t.block0 + t.blocks <= tok.q8_blocks) && (t.q8 || t.block0 >= tok.q8_blocks),
                "integer GEMM: a term's blocks straddle the int8 / int16 activations");
    at_term.push_back(per_nb);
    per_nb += t.blocks * (t.q8 ? 512 : 1024);  // staged bytes per block of 32 slots x 16 rows
    if (t.q8) most = std::max(most, t.blocks);
  }
  // each thread an even share of row blocks, run kIntRB at a time (a row block's sums do not depend on its company)
  at::parallel_for(0, NB, 1, [&](int64_t b0, int64_t b1) {
    std::vector<int64_t> buf64(static_cast<size_t>(kIntRB * per_nb / 8 + 8));  // 64-byte registers, 8-byte aligned
    std::vector<int16_t> pairs(static_cast<size_t>(most * 16 * 32));
    uint8_t* buf = reinterpret_cast<uint8_t*>(buf64.data());
    std::vector<const uint8_t*> staged;
    for (int64_t a : at_term) staged.push_back(buf + a);
    for (int64_t nb = b0; nb < b1; nb += kIntRB) {
      const int rb = static_cast<int>(std::min<int64_t>(kIntRB, b1 - nb));
      for (int r = 0; r < rb; ++r)
        for (size_t i = 0; i < terms.size(); ++i) {
          uint8_t* out = buf + r * per_nb + at_term[i];
          if (!terms[i].q8) {
            stage(nb + r, i, reinterpret_cast<int16_t*>(out));
            continue;
          }
          stage(nb + r, i, pairs.data());
          quads_from_pairs(pairs.data(), terms[i].blocks * 8, out);
        }
      const auto run = [&](auto rbc) {
        constexpr int R = decltype(rbc)::value;
        int_rowblocks<R>(staged, per_nb, terms, offs, nb, tok, M, y, ldy);
      };
      if (rb == 4) run(std::integral_constant<int, 4>());
      else if (rb == 3) run(std::integral_constant<int, 3>());
      else if (rb == 2) run(std::integral_constant<int, 2>());
      else run(std::integral_constant<int, 1>());
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
