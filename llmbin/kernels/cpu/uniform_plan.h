// A `uniform` (integer-code) layer repacked for uniform_kernels.h, and the product that drives it: one token on the
// spinning pool, a few tokens row block by row block, many tokens as dequantize + brgemm or, without AVX512-BF16,
// dequantize + sgemm (dequant_gemm.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "dequant_gemm.h"
#include "int_gemm.h"
#include "plan_registry.h"
#include "spin_pool.h"
#include "uniform_fill.h"

namespace {

constexpr int64_t kUniformPass = 4;  // row blocks per vector pass (uniform_rows_vnni's RB; AVX2 does it as 2 x 2)

// Pool shards for one token's `passes` passes over `lines` code lines: the calling thread's setting, at most a pass
// each, and none under 64 lines (a shard's wake-up costs more than it gives below that).
inline int one_token_shards(int64_t passes, int64_t lines) {
  return static_cast<int>(std::min<int64_t>({requested_threads(), passes, lines / 64}));
}

struct UniformPlan : PackedPlan {
  at::Tensor codes, scales, zeros, gidx, gscale;
  UniformLayer L;
  int64_t N, K;

  // codes uint8 [NB, lines, 32] (uniform_kernels.h's layout for `bits`), scales fp16 and zeros uint8 [NB, ng, 16]
  UniformPlan(at::Tensor codes_, at::Tensor scales_, at::Tensor zeros_, int64_t n, int64_t k, int64_t group,
              int64_t bits)
      : codes(codes_.contiguous()), scales(scales_.contiguous()), zeros(zeros_.contiguous()), N(n), K(k) {
    TORCH_CHECK(uniform_supported(), "the integer-code kernel needs AVX512-VNNI or AVX2");
    TORCH_CHECK(bits >= 1 && bits <= 8, "integer codes have 1 to 8 bits, not ", bits);
    const int64_t NB = (N + kRows - 1) / kRows, KB = (K + 31) / 32;
    TORCH_CHECK(group % 32 == 0 || group >= K, "integer-code groups must be whole blocks of 32 columns");
    const int64_t bpg = group >= K ? KB : group / 32, ng = (KB + bpg - 1) / bpg;
    const bool nib = bits <= 5, fifth = bits == 5;
    const int64_t lines = KB * (nib ? (fifth ? 10 : 8) : 16);
    TORCH_CHECK(codes.scalar_type() == at::kByte && codes.dim() == 3 && codes.size(0) == NB && codes.size(1) == lines &&
                codes.size(2) == 32, "bad integer codes tensor");
    TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.numel() == NB * ng * kRows, "bad integer-code scales");
    TORCH_CHECK(zeros.scalar_type() == at::kByte && zeros.numel() == NB * ng * kRows, "bad integer-code zero points");
    L = UniformLayer{codes.data_ptr<uint8_t>(), scales.data_ptr<at::Half>(), zeros.data_ptr<uint8_t>(), NB, KB, ng,
                     bpg, lines, nib, fifth};
    gidx = at::arange(KB * 32, at::kInt).masked_fill(at::arange(KB * 32, at::kInt) >= K, -1);
    gscale = (gidx >= 0).to(at::kFloat);
    publish();
  }
  ~UniformPlan() override { unpublish(); }

  // Row block nb as the bf16 tile the brgemm path multiplies, [KB*16 k pairs][kGemmCols][2] (its 16 rows first):
  // lets tests check the fill on any CPU with AVX512-BF16, AMX or not.
  at::Tensor block_tile(int64_t nb) const {
    TORCH_CHECK(nb >= 0 && nb < L.NB, "row block ", nb, " is outside [0, ", L.NB, ")");
    at::Tensor tile = at::zeros({L.KB * 16, kGemmCols, 2}, at::kBFloat16);
#ifdef LLMBIN_X86
    TORCH_CHECK(bf16_fill_supported(), "the bf16 tile fill needs AVX512-BF16");
    uniform_block_vnni(L, nb, 0, reinterpret_cast<uint16_t*>(tile.data_ptr()), kGemmCols);
#else
    TORCH_CHECK(false, "the bf16 tile fill needs AVX512-BF16");
#endif
    return tile;
  }
  int64_t rows() const override { return N; }

#ifdef LLMBIN_X86
  template <bool NIB, bool FIFTH>
  void vnni_rows(const int16_t* xq, const float* xs, const float* xsum, int64_t nb, int64_t b1, float* y) const {
    for (; nb + kUniformPass <= b1; nb += kUniformPass)
      uniform_rows_vnni<kUniformPass, NIB, FIFTH>(L, xq, xs, xsum, nb, y + nb * kRows);
    for (; nb < b1; ++nb) uniform_rows_vnni<1, NIB, FIFTH>(L, xq, xs, xsum, nb, y + nb * kRows);
  }
  template <bool NIB, bool FIFTH>
  void avx2_rows(const int16_t* xq, const float* xs, const float* xsum, int64_t nb, int64_t b1, float* y) const {
    for (; nb + 2 <= b1; nb += 2) uniform_rows_avx2<2, NIB, FIFTH>(L, xq, xs, xsum, nb, y + nb * kRows);
    for (; nb < b1; ++nb) uniform_rows_avx2<1, NIB, FIFTH>(L, xq, xs, xsum, nb, y + nb * kRows);
  }
#endif

  // One token's int16 activations, block scales and group sums. With AVX-512 vectorized: the scalar loop took ~1 us
  // a call, a third of a 192 x 576 product (SmolLM2 decode makes 210 such calls a token).
  void prepare_token(const float* x, int64_t isa, int16_t* xq, float* xs, float* xsum) const {
#ifdef LLMBIN_X86
    if (isa == kAvx512) {
      std::fill(xsum, xsum + L.ng, 0.f);
      const int32_t* gi = gidx.data_ptr<int32_t>();
      const float* gs = gscale.data_ptr<float>();
      for (int64_t b = 0; b < L.KB; ++b) {
        float sum;
        quantize_block_avx512(x, gi + b * 32, gs + b * 32, 32767.f, xq + b * 32, nullptr, xs + b, &sum);
        xsum[b / L.bpg] += sum;
      }
      return;
    }
#endif
    quantize_token(x, K, L, xq, xs, xsum);
  }

  // row blocks [b0, b1) of one token; isa: kScalar, kAvx2 or kAvx512 (VNNI)
  void rows_of(const int16_t* xq, const float* xs, const float* xsum, int64_t b0, int64_t b1, float* y,
               int64_t isa) const {
    int64_t nb = b0;
#ifdef LLMBIN_X86
    if (isa == kAvx512) {
      if (L.fifth) return vnni_rows<true, true>(xq, xs, xsum, nb, b1, y);
      if (L.nibbles) return vnni_rows<true, false>(xq, xs, xsum, nb, b1, y);
      return vnni_rows<false, false>(xq, xs, xsum, nb, b1, y);
    }
    if (isa == kAvx2) {
      if (L.fifth) return avx2_rows<true, true>(xq, xs, xsum, nb, b1, y);
      if (L.nibbles) return avx2_rows<true, false>(xq, xs, xsum, nb, b1, y);
      return avx2_rows<false, false>(xq, xs, xsum, nb, b1, y);
    }
#endif
    for (; nb < b1; ++nb) uniform_rows_scalar(L, xq, xs, xsum, nb, y + nb * kRows);
  }

  at::Tensor forward(const at::Tensor& x_in, int64_t isa, bool poison) const override {
    TORCH_CHECK(x_in.device().is_cpu() && x_in.dim() >= 1 && x_in.size(-1) == K, "expected CPU activations [..., ", K, "]");
    TORCH_CHECK(isa == kAuto || isa == kScalar || isa == kSgemm || (isa == kAvx512 && vnni_supported()) ||
                    (isa == kAvx2 && avx2_supported()) || (isa == kGemm && gemm_supported()) ||
                    ((isa == kIgemm || isa == kIgemm8) && vnni_supported()),
                "the integer-code kernel runs as scalar, avx2, avx512 (VNNI), gemm, igemm or sgemm on this CPU, not ISA ",
                isa);
    const bool direct = x_in.scalar_type() == at::kFloat && x_in.is_contiguous();
    const at::Tensor x = direct ? x_in : x_in.reshape({-1, K}).to(at::kFloat).contiguous();
    const int64_t M = x.numel() / K, NB = L.NB, ldy = NB * kRows;
    std::vector<int64_t> sizes = x_in.sizes().vec();
    sizes.back() = N;
    const bool in_place = direct && ldy == N;
    at::Tensor y = in_place ? at::empty(sizes, x.options()) : at::empty({M, ldy}, x.options());
    if (poison) y.fill_(std::numeric_limits<float>::quiet_NaN());
    const float* xp = x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    if (isa == kGemm || (isa == kAuto && M >= gemm_min_tokens() && gemm_supported())) {
      const auto fill = [&](int64_t nb, int64_t col0, uint16_t* tile) { uniform_block_vnni(L, nb, col0, tile, kGemmCols); };
      dequant_gemm(fill, NB, xp, K, M, gidx.data_ptr<int32_t>(), gscale.data_ptr<float>(), L.KB * 32, yp);
    } else if (isa == kIgemm || isa == kIgemm8 || (isa == kAuto && M >= gemm_min_tokens() && vnni_supported())) {
      const bool q8 = isa == kIgemm8 || (isa != kIgemm && int_gemm_rounding() == IntRounding::kInt8);
#ifdef LLMBIN_X86
      IntTokens tok;
      prepare_int_tokens(xp, K, M, gidx.data_ptr<int32_t>(), gscale.data_ptr<float>(), L.KB * 32, tok, q8 ? L.KB : 0);
      // the GEMM's float scales for this call (NB x ng x 16 of them: small beside the staged codes)
      std::vector<float> sc(NB * L.ng * kRows), zs(sc.size());
      at::parallel_for(0, NB, 64, [&](int64_t b0, int64_t b1) { float_scales512(L, b0, b1, sc.data(), zs.data()); });
      const std::vector<IntTerm> terms{IntTerm{0, L.KB, L.bpg, sc.data(), L.ng * kRows, kRows, q8}};
      const std::vector<IntOffsets> offs{IntOffsets{0, L.KB, L.bpg, zs.data(), L.ng}};
      const auto stage = [&](int64_t nb, size_t, int16_t* out) {
        for (int64_t b = 0; b < L.KB; ++b) uniform_stage_block(L, nb, b, out + b * 16 * 32);
      };
      int_gemm(stage, NB, terms, offs, tok, M, yp, ldy);
#endif
    } else if (isa == kSgemm || (isa == kAuto && M >= gemm_min_tokens())) {
      const auto fill = [&](int64_t nb, int64_t col0, float* rows) { uniform_block_f32(L, nb, col0, rows, L.KB * 32); };
      dequant_sgemm(fill, NB, xp, K, M, gidx.data_ptr<int32_t>(), gscale.data_ptr<float>(), L.KB * 32, yp);
    } else {
      const int64_t vec = isa == kScalar ? kScalar : isa == kAvx2 || !vnni_supported() ? kAvx2 : kAvx512;
      // per token: int16 activations, block scales, group sums
      const int64_t stride = L.KB * 32 / 2 + L.KB + L.ng;  // in floats
      std::vector<float> prep(static_cast<size_t>(M * stride));
      at::parallel_for(0, M, 64, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          float* p = prep.data() + t * stride;
          prepare_token(xp + t * K, vec, reinterpret_cast<int16_t*>(p), p + L.KB * 16, p + L.KB * 16 + L.KB);
        }
      });
      auto run = [&](int64_t t, int64_t b0, int64_t b1) {
        const float* p = prep.data() + t * stride;
        rows_of(reinterpret_cast<const int16_t*>(p), p + L.KB * 16, p + L.KB * 16 + L.KB, b0, b1, yp + t * ldy,
                vec);
      };
      const int64_t passes = (NB + kUniformPass - 1) / kUniformPass;
      auto split = [&](int i, int shards) { return std::min(NB, passes * i / shards * kUniformPass); };
      const int shards = one_token_shards(passes, NB * L.lines);
      const bool pooled = M == 1 && shards > 1 &&
                          SpinPool::mine().run(shards, [&](int i) { run(0, split(i, shards), split(i + 1, shards)); });
      if (!pooled)
        at::parallel_for(0, passes, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, L.lines * kUniformPass * M)),
                         [&](int64_t q0, int64_t q1) {
                           for (int64_t t = 0; t < M; ++t)
                             run(t, q0 * kUniformPass, std::min(NB, q1 * kUniformPass));
                         });
    }
    if (in_place) return y;
    at::Tensor out = ldy == N ? y : y.narrow(1, 0, N);
    return out.to(x_in.scalar_type()).reshape(sizes);
  }
};

}  // namespace
