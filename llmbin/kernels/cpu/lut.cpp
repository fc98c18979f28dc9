// Lookup-table GEMV/GEMM over llmbin bit planes (the repacked layout is built in __init__.py).
//
// Every 4 consecutive activations get a 16-entry table of their subset sums, so one 4-bit nibble
// of a plane row costs one lookup and one add instead of four masked adds. A table of 16 floats
// is exactly one AVX-512 register, and vpermps looks up 16 rows at once: it only reads the low
// 4 bits of each index lane, so a 32-bit word holding 32 bits of one row serves 8 lookups by
// shifting it right 4 bits each time. Rows are therefore interleaved 16 at a time, word by word.
//
// A "segment" is one bit-plane problem sharing the token's tables: the binarized channels
// (P = 1..2 planes, per-group scales, optional offsets) and, for PTQ1.61, the 4-bit salient block
// written as 4 planes with scales s*2^b and offset -z*s. Groups are padded to whole words, so a
// word never straddles two groups.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LLMBIN_X86 1
#endif

namespace {

constexpr int64_t L = 16;     // rows per block, entries per table
constexpr int64_t TW = 128;   // table floats per 32-bit word: 8 nibbles x 16 entries

struct Seg {
  const int32_t* words;   // [NB][KW][P][16]
  const float* scales;    // [NB][ng][P][16]
  const float* offsets;   // [NB][ng][16] or nullptr
  int64_t ng, wpg, P, word0, gsum0;  // word0/gsum0: where this segment starts in the token's tables/sums
};

struct Job {
  int64_t NB, KX, NG;     // KX: words of all segments (tables hold KX*TW floats per token), NG: groups
  const float* tables;    // [M][KX*TW]
  const float* gsums;     // [M][NG]
  float* y;               // [M][NB*16]
};

// ---- portable scalar path -------------------------------------------------------------------
void seg_scalar(const Seg& s, const Job& j, int64_t nb, int64_t t) {
  const int64_t KW = s.ng * s.wpg;
  const float* tab = j.tables + t * j.KX * TW + s.word0 * TW;
  const float* gs = j.gsums + t * j.NG + s.gsum0;
  float* y = j.y + t * j.NB * L + nb * L;
  for (int64_t lane = 0; lane < L; ++lane) {
    float yl = 0.f;
    for (int64_t g = 0; g < s.ng; ++g) {
      for (int64_t p = 0; p < s.P; ++p) {
        float acc = 0.f;
        for (int64_t w = g * s.wpg; w < (g + 1) * s.wpg; ++w) {
          uint32_t bits = static_cast<uint32_t>(s.words[((nb * KW + w) * s.P + p) * L + lane]);
          const float* tb = tab + w * TW;
          for (int q = 0; q < 8; ++q) acc += tb[q * L + ((bits >> (4 * q)) & 15u)];
        }
        yl += s.scales[((nb * s.ng + g) * s.P + p) * L + lane] * acc;
      }
      if (s.offsets) yl += s.offsets[(nb * s.ng + g) * L + lane] * gs[g];
    }
    y[lane] += yl;
  }
}

#ifdef LLMBIN_X86
// ---- AVX-512: RB row blocks x T tokens per pass, so each table load serves RB*P lookups and
// each shifted word serves T tokens. With fewer than 4 independent sums, two accumulators hide
// the add latency.
template <int RB, int P, int T>
__attribute__((target("avx512f"))) void seg_avx512(const Seg& s, const Job& j, int64_t nb, int64_t t0) {
  constexpr int A = RB * P * T >= 4 ? 1 : 2;
  const int64_t KW = s.ng * s.wpg, tstride = j.KX * TW;
  const float* tab = j.tables + t0 * tstride + s.word0 * TW;
  const float* gs = j.gsums + t0 * j.NG + s.gsum0;
  __m512 yacc[RB][T];
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) yacc[r][t] = _mm512_setzero_ps();
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
        for (int p = 0; p < P; ++p) wv[r][p] = _mm512_loadu_si512(s.words + (((nb + r) * KW + w) * P + p) * L);
      const float* tb = tab + w * TW;
#pragma GCC unroll 8
      for (int q = 0; q < 8; ++q) {
#pragma GCC unroll 16
        for (int t = 0; t < T; ++t) {
          const __m512 tv = _mm512_loadu_ps(tb + t * tstride + q * L);
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
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) {
        const __m512 sc = _mm512_loadu_ps(s.scales + (((nb + r) * s.ng + g) * P + p) * L);
#pragma GCC unroll 16
        for (int t = 0; t < T; ++t) {
          __m512 m = A == 2 ? _mm512_add_ps(acc[0][r][p][t], acc[A - 1][r][p][t]) : acc[0][r][p][t];
          yacc[r][t] = _mm512_fmadd_ps(sc, m, yacc[r][t]);
        }
      }
      if (s.offsets) {
        const __m512 off = _mm512_loadu_ps(s.offsets + ((nb + r) * s.ng + g) * L);
#pragma GCC unroll 16
        for (int t = 0; t < T; ++t) yacc[r][t] = _mm512_fmadd_ps(off, _mm512_set1_ps(gs[t * j.NG + g]), yacc[r][t]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      float* yp = j.y + (t0 + t) * j.NB * L + (nb + r) * L;
      _mm512_storeu_ps(yp, _mm512_add_ps(_mm512_loadu_ps(yp), yacc[r][t]));
    }
}

// ---- AVX2: an 8-lane permute looks up 3 bits; bit 3 picks the low or high half of the table.
template <int P>
__attribute__((target("avx2,fma"))) void seg_avx2(const Seg& s, const Job& j, int64_t nb, int64_t t) {
  const int64_t KW = s.ng * s.wpg;
  const float* tab = j.tables + t * j.KX * TW + s.word0 * TW;
  const float* gs = j.gsums + t * j.NG + s.gsum0;
  for (int h = 0; h < 2; ++h) {
    __m256 yacc = _mm256_setzero_ps();
    for (int64_t g = 0; g < s.ng; ++g) {
      __m256 acc[P][2];
      for (int p = 0; p < P; ++p) acc[p][0] = acc[p][1] = _mm256_setzero_ps();
      for (int64_t w = g * s.wpg; w < (g + 1) * s.wpg; ++w) {
        __m256i wv[P];
        for (int p = 0; p < P; ++p)
          wv[p] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.words + ((nb * KW + w) * P + p) * L + 8 * h));
        const float* tb = tab + w * TW;
#pragma GCC unroll 8
        for (int q = 0; q < 8; ++q) {
          const __m256 lo = _mm256_loadu_ps(tb + q * L), hi = _mm256_loadu_ps(tb + q * L + 8);
          for (int p = 0; p < P; ++p) {
            const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(wv[p], 28));
            const __m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, wv[p]), _mm256_permutevar8x32_ps(hi, wv[p]), sel);
            acc[p][q & 1] = _mm256_add_ps(acc[p][q & 1], v);
            wv[p] = _mm256_srli_epi32(wv[p], 4);
          }
        }
      }
      for (int p = 0; p < P; ++p) {
        const __m256 sc = _mm256_loadu_ps(s.scales + ((nb * s.ng + g) * P + p) * L + 8 * h);
        yacc = _mm256_fmadd_ps(sc, _mm256_add_ps(acc[p][0], acc[p][1]), yacc);
      }
      if (s.offsets)
        yacc = _mm256_fmadd_ps(_mm256_loadu_ps(s.offsets + (nb * s.ng + g) * L + 8 * h), _mm256_set1_ps(gs[g]), yacc);
    }
    float* yp = j.y + t * j.NB * L + nb * L + 8 * h;
    _mm256_storeu_ps(yp, _mm256_add_ps(_mm256_loadu_ps(yp), yacc));
  }
}
#endif

enum Isa : int64_t { kAuto = 0, kScalar = 1, kAvx2 = 2, kAvx512 = 3 };

int64_t best_isa() {
#ifdef LLMBIN_X86
  if (__builtin_cpu_supports("avx512f")) return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
#endif
  return kScalar;
}

// Runs one segment over row blocks [b0, b1) for tokens [t0, t1).
void run_seg(const Seg& s, const Job& j, int64_t b0, int64_t b1, int64_t t0, int64_t t1, int64_t isa) {
#ifdef LLMBIN_X86
  if (isa == kAvx512) {
    // RB*P = 4 table reuses when one token; four tokens share each shifted word otherwise.
#define LLMBIN_P(Pc)                                                                          \
  case Pc: {                                                                                  \
    int64_t t = t0;                                                                           \
    for (; t + 4 <= t1; t += 4)                                                               \
      for (int64_t nb = b0; nb < b1; ++nb) seg_avx512<1, Pc, 4>(s, j, nb, t);                 \
    for (; t < t1; ++t) {                                                                     \
      constexpr int RB = Pc >= 4 ? 1 : 4 / Pc;                                                \
      int64_t nb = b0;                                                                        \
      for (; nb + RB <= b1; nb += RB) seg_avx512<RB, Pc, 1>(s, j, nb, t);                     \
      for (; nb < b1; ++nb) seg_avx512<1, Pc, 1>(s, j, nb, t);                                \
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
          case 1: seg_avx2<1>(s, j, nb, t); break;
          case 2: seg_avx2<2>(s, j, nb, t); break;
          case 3: seg_avx2<3>(s, j, nb, t); break;
          case 4: seg_avx2<4>(s, j, nb, t); break;
          default: seg_scalar(s, j, nb, t);
        }
      }
    return;
  }
#endif
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t nb = b0; nb < b1; ++nb) seg_scalar(s, j, nb, t);
}

// Gathers (permutes, in_scales, pads) one token's activations, then builds its tables and group sums.
void build_token(const float* x, const int32_t* gidx, const float* gscale, int64_t KX, const std::vector<Seg>& segs,
                 float* xb, float* tab, float* gsum) {
  for (int64_t k = 0; k < KX * 32; ++k) xb[k] = gidx[k] >= 0 ? x[gidx[k]] * gscale[k] : 0.f;
  for (int64_t q = 0; q < KX * 8; ++q) {
    const float* v = xb + 4 * q;
    float* t = tab + q * L;
    // every entry is built by adding the activations of its set bits in increasing order
    t[0] = 0.f;
    t[1] = v[0];
    for (int c = 2; c < 4; ++c) t[c] = t[c - 2] + v[1];
    for (int c = 4; c < 8; ++c) t[c] = t[c - 4] + v[2];
    for (int c = 8; c < 16; ++c) t[c] = t[c - 8] + v[3];
  }
  for (const Seg& s : segs)
    for (int64_t g = 0; g < s.ng; ++g) {
      const float* v = xb + (s.word0 + g * s.wpg) * 32;
      float acc = 0.f;
      for (int64_t k = 0; k < s.wpg * 32; ++k) acc += v[k];
      gsum[s.gsum0 + g] = acc;
    }
}

// y[t, n] += sum over row n's nonzeros of value * x[t, col] (PB-LLM correction, original channel order).
template <typename I>
void sparse_rows(const at::Half* vals, const I* cols, const int32_t* rowptr, const float* x, int64_t K, float* y,
                 int64_t ystride, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t n = n0; n < n1; ++n) {
      float acc = 0.f;
      for (int32_t e = rowptr[n]; e < rowptr[n + 1]; ++e) acc += static_cast<float>(vals[e]) * x[t * K + cols[e]];
      y[t * ystride + n] += acc;
    }
}

Seg make_seg(const at::Tensor& words, const at::Tensor& scales, const at::Tensor& offsets, int64_t ng, int64_t wpg,
             int64_t word0, int64_t gsum0) {
  TORCH_CHECK(words.dim() == 4 && words.size(3) == L && words.is_contiguous() && words.scalar_type() == at::kInt);
  TORCH_CHECK(scales.is_contiguous() && scales.scalar_type() == at::kFloat && words.size(1) == ng * wpg);
  TORCH_CHECK(!offsets.defined() || offsets.numel() == 0 || (offsets.is_contiguous() && offsets.scalar_type() == at::kFloat));
  return Seg{words.data_ptr<int32_t>(), scales.data_ptr<float>(),
             offsets.defined() && offsets.numel() ? offsets.data_ptr<float>() : nullptr, ng, wpg, words.size(2), word0, gsum0};
}

}  // namespace

// x [M, K] float32; gidx/gscale [KX*32]; seg_* describe up to 2 segments (words/scales/offsets tensors,
// and ng, wpg per segment); sparse tensors empty when absent. Returns y [M, NB*16] float32.
at::Tensor lut_forward(const at::Tensor& x, const at::Tensor& gidx, const at::Tensor& gscale,
                       const std::vector<at::Tensor>& seg_words, const std::vector<at::Tensor>& seg_scales,
                       const std::vector<at::Tensor>& seg_offsets, const std::vector<int64_t>& seg_shape,
                       const at::Tensor& sp_values, const at::Tensor& sp_colidx, const at::Tensor& sp_rowptr,
                       int64_t n_rows, int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kFloat, "x must be contiguous float32 [M, K]");
  TORCH_CHECK(gidx.scalar_type() == at::kInt && gscale.scalar_type() == at::kFloat && gidx.numel() == gscale.numel());
  TORCH_CHECK(gidx.numel() % 32 == 0 && seg_words.size() == seg_scales.size() && seg_shape.size() == 2 * seg_words.size());
  if (isa == kAuto) isa = best_isa();
  TORCH_CHECK(isa >= kScalar && isa <= best_isa(), "requested ISA ", isa, " is not supported by this CPU");
  const int64_t M = x.size(0), K = x.size(1), KX = gidx.numel() / 32;
  std::vector<Seg> segs;
  int64_t word0 = 0, NG = 0;
  for (size_t i = 0; i < seg_words.size(); ++i) {
    segs.push_back(make_seg(seg_words[i], seg_scales[i], seg_offsets[i], seg_shape[2 * i], seg_shape[2 * i + 1], word0, NG));
    word0 += segs.back().ng * segs.back().wpg;
    NG += segs.back().ng;
  }
  TORCH_CHECK(word0 == KX, "segments do not cover the gather index");
  const int64_t NB = seg_words.empty() ? (n_rows + L - 1) / L : seg_words[0].size(0);
  for (const auto& w : seg_words) TORCH_CHECK(w.size(0) == NB, "segments disagree on the number of row blocks");
  const bool sparse = sp_values.numel() > 0;
  if (sparse) TORCH_CHECK(sp_rowptr.numel() == n_rows + 1 && sp_values.scalar_type() == at::kHalf);

  at::Tensor y = at::zeros({M, NB * L}, x.options());
  // Tables are 16 floats per activation: bound their memory by doing tokens in chunks.
  const int64_t chunk = std::max<int64_t>(4, std::min<int64_t>(M, (int64_t{8} << 20) / std::max<int64_t>(1, KX * TW * 4)));
  at::Tensor tables = at::empty({std::min(chunk, M), KX * TW}, x.options());
  at::Tensor gsums = at::empty({std::min(chunk, M), std::max<int64_t>(NG, 1)}, x.options());
  at::Tensor xb = at::empty({std::min(chunk, M), KX * 32}, x.options());
  const float* xp = x.data_ptr<float>();
  const int32_t* gi = gidx.data_ptr<int32_t>();
  const float* gsc = gscale.data_ptr<float>();
  // a row block costs ~10 cycles per word and token on AVX-512: stay serial below ~2k words of work
  int64_t per_block = 0;
  for (const Seg& s : segs) per_block += s.ng * s.wpg * s.P;
  for (int64_t m0 = 0; m0 < M; m0 += chunk) {
    const int64_t mc = std::min(chunk, M - m0);
    Job j{NB, KX, std::max<int64_t>(NG, 1), tables.data_ptr<float>(), gsums.data_ptr<float>(), y.data_ptr<float>() + m0 * NB * L};
    at::parallel_for(0, mc, mc > 1 ? 1 : 2, [&](int64_t a, int64_t b) {
      for (int64_t t = a; t < b; ++t)
        build_token(xp + (m0 + t) * K, gi, gsc, KX, segs, xb.data_ptr<float>() + t * KX * 32,
                    tables.data_ptr<float>() + t * KX * TW, gsums.data_ptr<float>() + t * j.NG);
    });
    const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, per_block * mc));
    at::parallel_for(0, NB, grain, [&](int64_t b0, int64_t b1) {
      for (const Seg& s : segs) run_seg(s, j, b0, b1, 0, mc, isa);
      if (!sparse) return;
      const int64_t n0 = b0 * L, n1 = std::min(b1 * L, n_rows);
      if (sp_colidx.scalar_type() == at::kShort)
        sparse_rows(sp_values.data_ptr<at::Half>(), sp_colidx.data_ptr<int16_t>(), sp_rowptr.data_ptr<int32_t>(),
                    xp + m0 * K, K, j.y, NB * L, n0, n1, 0, mc);
      else
        sparse_rows(sp_values.data_ptr<at::Half>(), sp_colidx.data_ptr<int32_t>(), sp_rowptr.data_ptr<int32_t>(),
                    xp + m0 * K, K, j.y, NB * L, n0, n1, 0, mc);
    });
  }
  return y;
}

int64_t lut_best_isa() { return best_isa(); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &lut_forward, "bit-plane LUT GEMV/GEMM (float32)");
  m.def("best_isa", &lut_best_isa, "0 auto, 1 scalar, 2 avx2, 3 avx512");
}
