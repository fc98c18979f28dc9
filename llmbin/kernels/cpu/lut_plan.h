// A layer repacked for the lookup-table kernels (lut_kernels.h) and the product that drives them.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "dequant_gemm.h"
#include "int_gemm.h"
#include "lut_kernels.h"
#include "plan_registry.h"
#include "sparse_kernels.h"
#include "spin_pool.h"

namespace {

constexpr int64_t kMinShardWords = 256;  // words of one token's work per thread below which a GEMV is not split
constexpr int64_t kBlocksPerPass = 4;     // row blocks per AVX-512 pass at most (run_segment's RB)

// The repacked weights of one bit-plane layer; forward() takes activations of any float dtype and shape [..., K].
struct Plan : PackedPlan {
  at::Tensor gidx, gscale, sp_values, sp_colidx, sp_rowptr;
  std::vector<at::Tensor> words, scales, offsets;
  std::vector<Segment> segs;
  std::vector<bool> pow2_planes;  // per segment: plane p's scales are plane 0's times 2^p (integer codes, <= 8 bits)
  int64_t N, K, NB, words_per_token, NG, per_block = 0;
  bool salient_last;  // the last segment is a salient block holding the outlier channels (layout.py), none before it

  ~Plan() override { unpublish(); }  // before the members go
  int64_t rows() const override { return N; }

  Plan(at::Tensor gidx_, at::Tensor gscale_, std::vector<at::Tensor> words_, std::vector<at::Tensor> scales_,
       std::vector<at::Tensor> offsets_, std::vector<int64_t> shape, at::Tensor spv, at::Tensor spc, at::Tensor spr,
       int64_t n_rows, int64_t k, bool salient_last_)
      : gidx(gidx_.contiguous()), gscale(gscale_.contiguous()), sp_values(spv), sp_colidx(spc), sp_rowptr(spr),
        words(words_), scales(scales_), offsets(offsets_), N(n_rows), K(k), salient_last(salient_last_) {
    TORCH_CHECK(gidx.scalar_type() == at::kInt && gscale.scalar_type() == at::kFloat && gidx.numel() == gscale.numel());
    TORCH_CHECK(gidx.numel() % 32 == 0 && words.size() == scales.size() && words.size() == offsets.size() &&
                shape.size() == 2 * words.size() && !words.empty());
    words_per_token = gidx.numel() / 32;
    NB = words[0].size(0);
    TORCH_CHECK(NB == (N + kRows - 1) / kRows, "row blocks do not match the number of rows");
    int64_t word0 = 0;
    NG = 0;
    for (size_t i = 0; i < words.size(); ++i) {
      const at::Tensor& w = words[i];
      const int64_t ng = shape[2 * i], wpg = shape[2 * i + 1];
      TORCH_CHECK(w.dim() == 4 && w.size(0) == NB && w.size(1) == ng * wpg && w.size(3) == kRows && w.is_contiguous() &&
                  w.scalar_type() == at::kInt, "bad words tensor for segment ", i);
      TORCH_CHECK(scales[i].is_contiguous() && scales[i].scalar_type() == at::kFloat &&
                  scales[i].numel() == NB * ng * w.size(2) * kRows, "bad scales for segment ", i);
      const bool off = offsets[i].numel() > 0;
      TORCH_CHECK(!off || (offsets[i].is_contiguous() && offsets[i].scalar_type() == at::kFloat &&
                           offsets[i].numel() == NB * ng * kRows), "bad offsets for segment ", i);
      segs.push_back(Segment{w.data_ptr<int32_t>(), scales[i].data_ptr<float>(),
                         off ? offsets[i].data_ptr<float>() : nullptr,
                         ng, wpg, w.size(2), word0, NG});
      bool pow2 = w.size(2) > 1 && w.size(2) <= 8;
      const float* sc = scales[i].data_ptr<float>();
      for (int64_t j = 0; pow2 && j < NB * ng; ++j)
        for (int64_t p = 1; pow2 && p < w.size(2); ++p)
          for (int64_t r = 0; r < kRows; ++r)
            pow2 = pow2 && sc[(j * w.size(2) + p) * kRows + r] == std::ldexp(sc[j * w.size(2) * kRows + r], static_cast<int>(p));
      pow2_planes.push_back(pow2);
      word0 += ng * wpg;
      NG += ng;
      per_block += ng * wpg * w.size(2);
    }
    TORCH_CHECK(word0 == words_per_token, "segments do not cover the gather index");
    TORCH_CHECK(!salient_last || segs.size() >= 2, "a salient block needs a segment of binarized channels before it");
    // Defence in depth (loading validates these first): every index the kernels read through must be in range.
    const int32_t* g = gidx.data_ptr<int32_t>();
    for (int64_t i = 0; i < gidx.numel(); ++i)
      TORCH_CHECK(g[i] >= -1 && g[i] < K, "gather index ", g[i], " at ", i, " is outside [-1, ", K, ")");
    if (sp_values.numel() > 0) {
      TORCH_CHECK(sp_rowptr.numel() == N + 1 && sp_rowptr.scalar_type() == at::kInt && sp_rowptr.is_contiguous() &&
                  sp_values.scalar_type() == at::kHalf && sp_values.is_contiguous() && sp_colidx.is_contiguous() &&
                  (sp_colidx.scalar_type() == at::kShort || sp_colidx.scalar_type() == at::kInt) &&
                  sp_colidx.numel() == sp_values.numel(), "bad sparse correction tensors");
      const int32_t* rp = sp_rowptr.data_ptr<int32_t>();
      TORCH_CHECK(rp[0] == 0 && rp[N] == sp_values.numel(), "sparse row pointers must run from 0 to nnz");
      for (int64_t n = 0; n < N; ++n) TORCH_CHECK(rp[n] <= rp[n + 1], "sparse row pointers decrease at row ", n);
      for (int64_t e = 0; e < sp_colidx.numel(); ++e) {
        const int64_t c = sp_colidx.scalar_type() == at::kShort ? sp_colidx.data_ptr<int16_t>()[e]
                                                                 : sp_colidx.data_ptr<int32_t>()[e];
        TORCH_CHECK(c >= 0 && c < K, "sparse column index ", c, " is outside [0, ", K, ")");
      }
    }
    publish();
  }

  // poison: fill the output and workspace with NaN first (tests: every value used must be written)
  at::Tensor forward(const at::Tensor& x_in, int64_t isa, bool poison) const override {
    const bool auto_isa = isa == kAuto;
    TORCH_CHECK(x_in.device().is_cpu() && x_in.dim() >= 1 && x_in.size(-1) == K,
                "expected CPU activations [..., ", K, "]");
    TORCH_CHECK(isa != kGemm || gemm_supported(), "the dequantize + GEMM path needs AVX512-BF16 and oneDNN's brgemm");
    if (isa == kAuto) isa = best_isa();
    TORCH_CHECK((isa >= kScalar && isa <= best_isa()) || isa == kGemm || isa == kSgemm ||
                    ((isa == kIgemm || isa == kIgemm8) && vnni_supported()),
                "requested ISA ", isa, " is not supported by this CPU");
    // A decode step makes ~200 of these calls of a few us each: float32 contiguous input, an output in its final
    // shape and a reused per-thread workspace skip the ATen calls (~0.3-0.5 us each) a general input needs.
    const bool direct = x_in.scalar_type() == at::kFloat && x_in.is_contiguous();
    const at::Tensor x = direct ? x_in : x_in.reshape({-1, K}).to(at::kFloat).contiguous();
    const int64_t M = x.numel() / K;
    std::vector<int64_t> sizes = x_in.sizes().vec();
    sizes.back() = N;
    const bool in_place = direct && NB * kRows == N;  // the kernel can write the returned tensor itself
    at::Tensor y = in_place ? at::empty(sizes, x.options()) : at::empty({M, NB * kRows}, x.options());
    // Tables take 16 floats per activation: bound their memory by doing tokens in chunks.
    const int64_t chunk = std::min(M, std::max<int64_t>(4, (int64_t{8} << 20) / (words_per_token * kTableFloats * 4)));
    const int64_t wstride = words_per_token * kTableFloats + words_per_token * 32 + NG;
    thread_local std::vector<float> scratch;
    at::Tensor work;
    float* wbase;
    if (poison) {
      work = at::full({std::max<int64_t>(chunk, 1), wstride}, std::numeric_limits<float>::quiet_NaN(), x.options());
      y.fill_(std::numeric_limits<float>::quiet_NaN());
      wbase = work.data_ptr<float>();
    } else {
      const size_t need = static_cast<size_t>(std::max<int64_t>(chunk, 1) * wstride);
      if (scratch.size() < need) scratch.resize(need);
      wbase = scratch.data();
    }
    const float* xp = x.data_ptr<float>();
    const bool sparse = sp_values.numel() > 0;
    if (isa == kGemm || (auto_isa && M >= gemm_min_tokens() && gemm_supported())) {
      const auto fill = [&](int64_t nb, int64_t col0, uint16_t* tile) {
        for (const Segment& s : segs) dequant_block_vnni(s, nb, col0, tile);
      };
      dequant_gemm(fill, NB, xp, K, M, gidx.data_ptr<int32_t>(), gscale.data_ptr<float>(), words_per_token * 32,
                   y.data_ptr<float>());
      if (sparse)
        at::parallel_for(0, M, 64, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) run_sparse(xp + t * K, y.data_ptr<float>() + t * NB * kRows, 0, N, best_isa());
        });
      return finish(y, x_in, sizes, M, in_place);
    }
    if (isa == kIgemm || isa == kIgemm8 || (auto_isa && M >= gemm_min_tokens() && vnni_supported())) {
      const IntRounding rounding = isa == kIgemm8 ? IntRounding::kInt8 : isa == kIgemm ? IntRounding::kInt16
                                                                                       : int_gemm_rounding();
      const int64_t q8_blocks = rounding == IntRounding::kInt8 ? words_per_token
                                : rounding == IntRounding::kBinarizedInt8 && salient_last ? segs.back().word0
                                                                                          : 0;
#ifdef LLMBIN_X86
      IntTokens tok;
      prepare_int_tokens(xp, K, M, gidx.data_ptr<int32_t>(), gscale.data_ptr<float>(), words_per_token * 32, tok,
                         q8_blocks);
      std::vector<IntTerm> terms;
      std::vector<IntOffsets> offs;
      std::vector<std::pair<size_t, int64_t>> plane_of;  // term -> (segment, first plane); all planes if merged
      for (size_t i = 0; i < segs.size(); ++i) {
        const Segment& s = segs[i];
        for (int64_t p = 0; p < (pow2_planes[i] ? 1 : s.P); ++p) {
          terms.push_back(IntTerm{s.word0, s.ng * s.wpg, s.wpg, s.scales + p * kRows, s.ng * s.P * kRows, s.P * kRows,
                                  s.word0 + s.ng * s.wpg <= q8_blocks});
          plane_of.emplace_back(i, p);
        }
        if (s.offsets) offs.push_back(IntOffsets{s.word0, s.ng * s.wpg, s.wpg, s.offsets, s.ng});
      }
      const auto stage = [&](int64_t nb, size_t i, int16_t* out) {
        const Segment& s = segs[plane_of[i].first];
        const int64_t p = plane_of[i].second, KW = s.ng * s.wpg, P = pow2_planes[plane_of[i].first] ? s.P : 1;
        for (int64_t w = 0; w < KW; ++w) stage_planes_word(s.words + ((nb * KW + w) * s.P + p) * kRows, P, out + w * 16 * 32);
      };
      int_gemm(stage, NB, terms, offs, tok, M, y.data_ptr<float>(), NB * kRows);
      if (sparse) sparse_as_dense(x, y);
      return finish(y, x_in, sizes, M, in_place);
#endif
    }
    if (isa == kSgemm || (auto_isa && M >= gemm_min_tokens() && !gemm_supported())) {
      const int64_t slots = words_per_token * 32;
      const auto fill = [&](int64_t nb, int64_t col0, float* tile) {
        for (const Segment& s : segs) dequant_block_f32(s, nb, col0, tile, slots);
      };
      dequant_sgemm(fill, NB, xp, K, M, gidx.data_ptr<int32_t>(), gscale.data_ptr<float>(), slots, y.data_ptr<float>());
      if (sparse) sparse_as_dense(x, y);
      return finish(y, x_in, sizes, M, in_place);
    }
    for (int64_t m0 = 0; m0 < M; m0 += chunk) {
      const int64_t mc = std::min(chunk, M - m0);
      float* wp = wbase;
      float* y0 = y.data_ptr<float>() + m0 * NB * kRows;
      // per token: tables, then the gathered activations, then the group sums
      auto build = [&](int64_t t, float* base) {
#ifdef LLMBIN_X86
        if (isa == kAvx512) {
          build_avx512(xp + (m0 + t) * K, gidx.data_ptr<int32_t>(), gscale.data_ptr<float>(), words_per_token, segs,
                       base + words_per_token * kTableFloats, base, base + words_per_token * kTableFloats + words_per_token * 32);
          return;
        }
#endif
        build_scalar(xp + (m0 + t) * K, gidx.data_ptr<int32_t>(), gscale.data_ptr<float>(), words_per_token, segs,
                     base + words_per_token * kTableFloats, base, base + words_per_token * kTableFloats + words_per_token * 32);
      };
      auto blocks = [&](const TokenBatch& j, int64_t b0, int64_t b1) {
        TokenBatch js = j;
        for (const Segment& s : segs) {
          run_segment(s, js, b0, b1, 0, mc, isa);
          js.first = false;
        }
        if (!sparse) return;
        const int64_t n0 = b0 * kRows, n1 = std::min(b1 * kRows, N);
        for (int64_t t = 0; t < mc; ++t) run_sparse(xp + (m0 + t) * K, j.y + t * NB * kRows, n0, n1, isa);
      };
      // Threads split the row blocks at multiples of kBlocksPerPass (the most blocks one kernel pass takes), so every
      // block is summed in the same order however many threads share the work: results are bit-identical.
      const int64_t pass_count = (NB + kBlocksPerPass - 1) / kBlocksPerPass;
      auto split = [&](int i, int shards) { return std::min(NB, pass_count * i / shards * kBlocksPerPass); };
      // One token on the spinning pool: every thread builds its own copy of the tables (~0.3 us), which is
      // faster than reading the caller's from another core's cache.
      const int shards = static_cast<int>(
          std::min<int64_t>({requested_threads(), pass_count, per_block * NB * mc / kMinShardWords}));
      const bool pooled = mc == 1 && shards > 1 && SpinPool::mine().run(shards, [&](int i) {
        thread_local std::vector<float> own;
        float* base = wp;
        if (i > 0) {
          if (static_cast<int64_t>(own.size()) < wstride) own.resize(wstride);
          base = own.data();
        }
        build(0, base);
        blocks(TokenBatch{NB, wstride, base, base + words_per_token * kTableFloats + words_per_token * 32, y0, true}, split(i, shards), split(i + 1, shards));
      });
      if (pooled) continue;
      // building a token's tables is ~1 cycle per activation: only worth threads for many tokens
      at::parallel_for(0, mc, std::max<int64_t>(1, 32768 / (words_per_token * 32)), [&](int64_t a, int64_t b) {
        for (int64_t t = a; t < b; ++t) build(t, wp + t * wstride);
      });
      // a block costs ~10 cycles per word and token with AVX-512: stay serial below ~2k words of work
      const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, per_block * mc));
      const TokenBatch j{NB, wstride, wp, wp + words_per_token * kTableFloats + words_per_token * 32, y0, true};
      at::parallel_for(0, pass_count, std::max<int64_t>(1, grain / kBlocksPerPass),
                       [&](int64_t q0, int64_t q1) { blocks(j, q0 * kBlocksPerPass, std::min(q1 * kBlocksPerPass, NB)); });
    }
    return finish(y, x_in, sizes, M, in_place);
  }

  at::Tensor finish(const at::Tensor& y, const at::Tensor& x_in, const std::vector<int64_t>& sizes, int64_t M,
                    bool in_place) const {
    if (in_place) return y;
    at::Tensor out = NB * kRows == N ? y : y.narrow(1, 0, N);
    return out.to(x_in.scalar_type()).reshape(sizes);
  }

  // y[M][NB*16] += x . S^T for many tokens: the sparse rows scattered chunk by chunk into a dense float32 matrix and
  // multiplied by sgemm (per-token sparse dot products cost ~8x the dense product they correct)
  void sparse_as_dense(const at::Tensor& x, const at::Tensor& y) const {
    const at::Half* v = sp_values.data_ptr<at::Half>();
    const int32_t* rp = sp_rowptr.data_ptr<int32_t>();
    const bool narrow = sp_colidx.scalar_type() == at::kShort;
    const int16_t* c16 = narrow ? sp_colidx.data_ptr<int16_t>() : nullptr;
    const int32_t* c32 = narrow ? nullptr : sp_colidx.data_ptr<int32_t>();
    const int64_t chunk = std::max<int64_t>(16, (int64_t{1} << 20) / K);
    const at::Tensor x2 = x.view({-1, K}), y2 = y.view({-1, NB * kRows});
    at::Tensor dense = at::empty({std::min(chunk, N), K}, at::kFloat);
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      const int64_t n1 = std::min(N, n0 + chunk);
      at::Tensor rows = dense.narrow(0, 0, n1 - n0);
      rows.zero_();
      float* d = rows.data_ptr<float>();
      for (int64_t n = n0; n < n1; ++n)
        for (int32_t e = rp[n]; e < rp[n + 1]; ++e) {
          d[(n - n0) * K + (narrow ? c16[e] : c32[e])] += static_cast<float>(v[e]);
        }
      at::Tensor out = y2.narrow(1, n0, n1 - n0);
      out.addmm_(x2, rows.t());
    }
  }

  void run_sparse(const float* x, float* y, int64_t n0, int64_t n1, int64_t isa) const {
    const at::Half* v = sp_values.data_ptr<at::Half>();
    const int32_t* rp = sp_rowptr.data_ptr<int32_t>();
    const bool narrow = sp_colidx.scalar_type() == at::kShort;
#ifdef LLMBIN_X86
    if (isa == kAvx512) {
      if (narrow) sparse_avx512(v, sp_colidx.data_ptr<int16_t>(), rp, x, y, n0, n1);
      else sparse_avx512(v, sp_colidx.data_ptr<int32_t>(), rp, x, y, n0, n1);
      return;
    }
#endif
    if (narrow) sparse_scalar(v, sp_colidx.data_ptr<int16_t>(), rp, x, y, n0, n1);
    else sparse_scalar(v, sp_colidx.data_ptr<int32_t>(), rp, x, y, n0, n1);
  }
};

}  // namespace
