// Many-token products (prefill, scoring, distillation): the layer is dequantized on every call, 64 rows at a time,
// into a small bf16 tile already in the layout oneDNN's batch-reduce GEMM reads (pairs of consecutive k interleaved,
// "VNNI"), and multiplied with the batch's gathered activations by torch's brgemm (AMX tiles; gemm_supported() says
// where torch offers it). Accumulation and the output stay float32.
//
// Why not the lookup tables: a table lookup serves 16 rows x 4 weights per instruction, an AMX tile multiply
// 16 x 16 x 32; past a few tokens the per-call dequantization (~1 instruction per 4 weights, once per call, not
// per token) is the cheaper price. Where each wins is measured in benchmarks/results/prefill-*.md.
//
// Rounding: every weight value (offset + its planes' scales, summed in float32) and every gathered activation is
// rounded to bf16 (relative error <= 2^-9 each), products are exact in float32 and summed in float32, so
// |y - y_exact| <= (2^-8 + 2^-16) * sum_k |x_k| |w_k| + float32 summation error. Tests hold the kernel to it.
//
// CPUs without that brgemm (AMD Zen 3 and Zen 5, older Xeons) take the float32 twin, dequant_sgemm: the layer as float32 rows
// in ~4 MB chunks, each one multithreaded sgemm. Its weights are the reference's own values, so it differs from the torch
// backend only in summation order; it wins over the tables because an FMA serves 8 weights x 1 token per
// instruction for every token, where the tables pay their build and bit extraction again for each token.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <cstdint>
#include <vector>

#include "lut_kernels.h"

namespace {

constexpr int64_t kGemmCols = 64;     // weight rows per tile = columns of one brgemm call (4 row blocks)
constexpr int64_t kGemmTokens = 256;  // activation rows per brgemm call

// Fewer tokens than this stay on the lookup tables (set_gemm_min_tokens; the crossover is measured per CPU).
inline int64_t& gemm_min_tokens() {
  static int64_t tokens = 16;
  return tokens;
}

bool bf16_fill_supported() {
#ifdef LLMBIN_X86
  static const bool ok = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
  return ok;
#else
  return false;
#endif
}

// torch's brgemm packs bf16 only where oneDNN has a bf16 brgemm for it: seen true with AMX (Xeon Sapphire Rapids),
// false on an AVX512-BF16 CPU without AMX (AMD Zen 5), which then takes the float32 sgemm path.
bool gemm_supported() {
#ifdef LLMBIN_X86
  static const bool ok = bf16_fill_supported() && at::native::cpublas::could_pack(at::kBFloat16);
  return ok;
#else
  return false;
#endif
}

#ifdef LLMBIN_X86
// One row block (16 rows) of one segment into the tile: k pair p of row r at tile[(p * kGemmCols + col0 + r) * 2].
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void dequant_block_vnni(const Segment& s, int64_t nb, int64_t col0,
                                                                              uint16_t* tile) {
  const int64_t KW = s.ng * s.wpg;
  // lanes 0-15 of cvtne2ps(hi, lo) hold lo, 16-31 hi; a k pair is (lo, hi) side by side in one 32-bit lane
  alignas(64) static const uint16_t order[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i pair_order = _mm512_load_si512(order);
  for (int64_t g = 0; g < s.ng; ++g) {
    __m512 sc[4];
    for (int64_t p = 0; p < s.P; ++p) sc[p] = _mm512_loadu_ps(s.scales + ((nb * s.ng + g) * s.P + p) * kRows);
    const __m512 off = s.offsets ? _mm512_loadu_ps(s.offsets + (nb * s.ng + g) * kRows) : _mm512_setzero_ps();
    for (int64_t w = g * s.wpg; w < (g + 1) * s.wpg; ++w) {
      __m512i bits[4];
      for (int64_t p = 0; p < s.P; ++p) bits[p] = _mm512_loadu_si512(s.words + ((nb * KW + w) * s.P + p) * kRows);
      uint16_t* out = tile + ((s.word0 + w) * 16 * kGemmCols + col0) * 2;
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) {
        const __m512i even = _mm512_set1_epi32(1u << (2 * j)), odd = _mm512_set1_epi32(2u << (2 * j));
        __m512 lo = off, hi = off;
        for (int64_t p = 0; p < s.P; ++p) {
          lo = _mm512_mask_add_ps(lo, _mm512_test_epi32_mask(bits[p], even), lo, sc[p]);
          hi = _mm512_mask_add_ps(hi, _mm512_test_epi32_mask(bits[p], odd), hi, sc[p]);
        }
        const __m512i packed = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
        _mm512_storeu_si512(out + j * kGemmCols * 2, _mm512_permutexvar_epi16(pair_order, packed));
      }
    }
  }
}

// One token's gathered activations (perm, in_scale, zero padding) as bf16.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void gather_bf16(const float* x, const int32_t* gidx,
                                                                       const float* gscale, int64_t slots,
                                                                       uint16_t* out) {
  for (int64_t k = 0; k < slots; k += 32) {
    __m512 v[2];
    for (int h = 0; h < 2; ++h) {
      const __m512i idx = _mm512_loadu_si512(gidx + k + 16 * h);
      const __mmask16 valid = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512());
      v[h] = _mm512_mul_ps(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, idx, x, 4),
                           _mm512_loadu_ps(gscale + k + 16 * h));
    }
    _mm512_storeu_si512(out + k, (__m512i)_mm512_cvtne2ps_pbh(v[1], v[0]));
  }
}
#endif

// y[M][NB*16] = gathered(x) . W^T; slots = the gathered vector's length (a multiple of 32); fill(nb, col0, tile)
// writes row block nb's weights into the tile at column col0 (dequant_block_vnni for bit planes, uniform_plan.h's
// for integer codes).
template <typename Fill>
void dequant_gemm(const Fill& fill, int64_t NB, const float* x, int64_t K, int64_t M, const int32_t* gidx,
                  const float* gscale, int64_t slots, float* y) {
#ifdef LLMBIN_X86
  using at::native::cpublas::brgemm;
  at::Tensor xg = at::empty({M, slots}, at::kBFloat16);
  auto* a = reinterpret_cast<uint16_t*>(xg.data_ptr<at::BFloat16>());
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) gather_bf16(x + m * K, gidx, gscale, slots, a + m * slots);
  });
  const int64_t ldy = NB * kRows, tiles = (NB * kRows + kGemmCols - 1) / kGemmCols;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<uint16_t> tile;
    if (static_cast<int64_t>(tile.size()) < slots * kGemmCols) tile.resize(slots * kGemmCols);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t nb0 = t * kGemmCols / kRows, nb1 = std::min(NB, nb0 + kGemmCols / kRows);
      for (int64_t nb = nb0; nb < nb1; ++nb) fill(nb, (nb - nb0) * kRows, tile.data());
      const int64_t cols = (nb1 - nb0) * kRows;
      const auto* b = reinterpret_cast<const at::BFloat16*>(tile.data());
      for (int64_t m0 = 0; m0 < M; m0 += kGemmTokens) {
        const int64_t mc = std::min(kGemmTokens, M - m0);
        brgemm(mc, cols, slots, slots, kGemmCols, ldy, false, reinterpret_cast<const at::BFloat16*>(a + m0 * slots), b,
               y + m0 * ldy + t * kGemmCols);
      }
    }
    at::native::cpublas::brgemm_release();
  });
#else
  TORCH_CHECK(false, "the dequantize + GEMM path needs x86 with AVX512-BF16");
#endif
}

// One row block (16 rows) of one segment into float32 rows [rows][slots] at row col0: the values the reference
// dequantizes (offset + the set planes' scales), 32 columns per word.
void dequant_block_f32_scalar(const Segment& s, int64_t nb, int64_t col0, float* rows, int64_t slots) {
  const int64_t KW = s.ng * s.wpg;
  for (int64_t g = 0; g < s.ng; ++g)
    for (int64_t r = 0; r < kRows; ++r) {
      const float off = s.offsets ? s.offsets[(nb * s.ng + g) * kRows + r] : 0.f;
      for (int64_t w = g * s.wpg; w < (g + 1) * s.wpg; ++w) {
        float* out = rows + (col0 + r) * slots + (s.word0 + w) * 32;
        for (int j = 0; j < 32; ++j) out[j] = off;
        for (int64_t p = 0; p < s.P; ++p) {
          const uint32_t bits = static_cast<uint32_t>(s.words[((nb * KW + w) * s.P + p) * kRows + r]);
          const float sc = s.scales[((nb * s.ng + g) * s.P + p) * kRows + r];
          for (int j = 0; j < 32; ++j) out[j] += ((bits >> j) & 1u) ? sc : 0.f;
        }
      }
    }
}

#ifdef LLMBIN_X86
// 8 columns per instruction: a word's bit j selects its plane's scale in lane j % 8 of pass j / 8
__attribute__((target("avx2,fma"))) void dequant_block_f32_avx2(const Segment& s, int64_t nb, int64_t col0, float* rows,
                                                                int64_t slots) {
  const int64_t KW = s.ng * s.wpg;
  const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  for (int64_t g = 0; g < s.ng; ++g)
    for (int64_t r = 0; r < kRows; ++r) {
      const __m256 off = _mm256_set1_ps(s.offsets ? s.offsets[(nb * s.ng + g) * kRows + r] : 0.f);
      __m256 sc[8];
      for (int64_t p = 0; p < s.P; ++p) sc[p] = _mm256_set1_ps(s.scales[((nb * s.ng + g) * s.P + p) * kRows + r]);
      for (int64_t w = g * s.wpg; w < (g + 1) * s.wpg; ++w) {
        float* out = rows + (col0 + r) * slots + (s.word0 + w) * 32;
        __m256 v[4] = {off, off, off, off};
        for (int64_t p = 0; p < s.P; ++p) {
          const uint32_t bits = static_cast<uint32_t>(s.words[((nb * KW + w) * s.P + p) * kRows + r]);
          for (int q = 0; q < 4; ++q) {
            const __m256i b = _mm256_set1_epi32(static_cast<int32_t>((bits >> (8 * q)) & 0xffu));
            const __m256 set = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(b, lane_bit), lane_bit));
            v[q] = _mm256_add_ps(v[q], _mm256_and_ps(set, sc[p]));
          }
        }
        for (int q = 0; q < 4; ++q) _mm256_storeu_ps(out + 8 * q, v[q]);
      }
    }
}
#endif

void dequant_block_f32(const Segment& s, int64_t nb, int64_t col0, float* rows, int64_t slots) {
#ifdef LLMBIN_X86
  if (avx2_supported() && s.P <= 8) return dequant_block_f32_avx2(s, nb, col0, rows, slots);
#endif
  dequant_block_f32_scalar(s, nb, col0, rows, slots);
}

// dequant_gemm's float32 twin (any CPU): the layer dequantized chunk by chunk of rows into a reused buffer (~4 MB,
// so a chunk stays in cache), each chunk one multithreaded sgemm; fill(nb, row0, rows) writes row block nb as
// float32 rows of `slots` values.
template <typename Fill>
void dequant_sgemm(const Fill& fill, int64_t NB, const float* x, int64_t K, int64_t M, const int32_t* gidx,
                   const float* gscale, int64_t slots, float* y) {
  at::Tensor xg = at::empty({M, slots}, at::kFloat);
  float* a = xg.data_ptr<float>();
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t k = 0; k < slots; ++k) a[m * slots + k] = gidx[k] >= 0 ? x[m * K + gidx[k]] * gscale[k] : 0.f;
  });
  const int64_t ldy = NB * kRows, chunk_blocks = std::max<int64_t>(4, (int64_t{1} << 20) / (slots * kRows));
  const at::Tensor yt = at::from_blob(y, {M, ldy}, at::kFloat);
  thread_local std::vector<float> buffer;
  const int64_t chunk_rows = std::min(NB, chunk_blocks) * kRows;
  if (static_cast<int64_t>(buffer.size()) < chunk_rows * slots) buffer.resize(chunk_rows * slots);
  float* const buf = buffer.data();  // the caller's: a thread_local named inside the lambda would be each worker's
  for (int64_t b0 = 0; b0 < NB; b0 += chunk_blocks) {
    const int64_t b1 = std::min(NB, b0 + chunk_blocks);
    at::parallel_for(b0, b1, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t nb = c0; nb < c1; ++nb) fill(nb, (nb - b0) * kRows, buf);
    });
    const at::Tensor w = at::from_blob(buf, {(b1 - b0) * kRows, slots}, at::kFloat);
    at::Tensor out = yt.narrow(1, b0 * kRows, (b1 - b0) * kRows);
    at::mm_out(out, xg, w.t());  // ATen writes the strided view in place (BLAS ldc = ldy)
  }
}

}  // namespace
