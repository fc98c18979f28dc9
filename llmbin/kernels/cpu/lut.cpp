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
// word never straddles two groups.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
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
  int64_t NB, tstride;    // tstride: floats from one token's tables (and group sums) to the next's
  const float* tables;    // token t: tables + t*tstride, [words][8][16]
  const float* gsums;     // token t: gsums + t*tstride, [groups]
  float* y;               // [M][NB*16]
  bool first;             // the first segment writes y, later ones add to it
};

// ---- portable scalar path -------------------------------------------------------------------
void seg_scalar(const Seg& s, const Job& j, int64_t nb, int64_t t) {
  const int64_t KW = s.ng * s.wpg;
  const float* tab = j.tables + t * j.tstride + s.word0 * TW;
  const float* gs = j.gsums + t * j.tstride + s.gsum0;
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
    y[lane] = j.first ? yl : y[lane] + yl;
  }
}

#ifdef LLMBIN_X86
// ---- AVX-512: RB row blocks x T tokens per pass, so each table load serves RB*P lookups and
// each shifted word serves T tokens. With fewer than 4 independent sums, two accumulators hide
// the add latency. Outputs stay in registers when few, else are updated in memory per group.
template <int RB, int P, int T>
__attribute__((target("avx512f"))) void seg_avx512(const Seg& s, const Job& j, int64_t nb, int64_t t0) {
  constexpr int A = RB * P * T >= 4 ? 1 : 2;
  constexpr bool YREG = RB * T <= 4;
  const int64_t KW = s.ng * s.wpg, tstride = j.tstride, ystride = j.NB * L;
  const float* tab = j.tables + t0 * tstride + s.word0 * TW;
  const float* gs = j.gsums + t0 * tstride + s.gsum0;
  float* y0 = j.y + t0 * ystride + nb * L;
  __m512 yacc[YREG ? RB : 1][YREG ? T : 1];
  if constexpr (YREG) {
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t)
        yacc[r][t] = j.first ? _mm512_setzero_ps() : _mm512_loadu_ps(y0 + t * ystride + r * L);
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
        for (int p = 0; p < P; ++p) wv[r][p] = _mm512_loadu_si512(s.words + (((nb + r) * KW + w) * P + p) * L);
      // A layer row block's words are a short stream (K/32 lines per plane): too short for the hardware prefetcher
      // to catch, so fetch the next pass's lines while this one computes (+10-15% decode on SmolLM2).
      if (nb + 2 * RB <= j.NB) {
#pragma GCC unroll 16
        for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
          for (int p = 0; p < P; ++p)
            _mm_prefetch(reinterpret_cast<const char*>(s.words + (((nb + RB + r) * KW + w) * P + p) * L), _MM_HINT_T0);
      }
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
      __m512 sc[P];
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) sc[p] = _mm512_loadu_ps(s.scales + (((nb + r) * s.ng + g) * P + p) * L);
      const __m512 off = s.offsets ? _mm512_loadu_ps(s.offsets + ((nb + r) * s.ng + g) * L) : _mm512_setzero_ps();
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        __m512 v = YREG ? yacc[YREG ? r : 0][YREG ? t : 0]
                        : j.first && g == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(y0 + t * ystride + r * L);
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p)
          v = _mm512_fmadd_ps(sc[p], A == 2 ? _mm512_add_ps(acc[0][r][p][t], acc[A - 1][r][p][t]) : acc[0][r][p][t], v);
        if (s.offsets) v = _mm512_fmadd_ps(off, _mm512_set1_ps(gs[t * tstride + g]), v);
        if constexpr (YREG) yacc[r][t] = v; else _mm512_storeu_ps(y0 + t * ystride + r * L, v);
      }
    }
  }
  if constexpr (YREG) {
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) _mm512_storeu_ps(y0 + t * ystride + r * L, yacc[r][t]);
  }
}

// ---- AVX2: an 8-lane permute looks up 3 bits; bit 3 picks the low or high half of the table.
template <int P>
__attribute__((target("avx2,fma"))) void seg_avx2(const Seg& s, const Job& j, int64_t nb, int64_t t) {
  const int64_t KW = s.ng * s.wpg;
  const float* tab = j.tables + t * j.tstride + s.word0 * TW;
  const float* gs = j.gsums + t * j.tstride + s.gsum0;
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
            const __m256 v =
                _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, wv[p]), _mm256_permutevar8x32_ps(hi, wv[p]), sel);
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
    _mm256_storeu_ps(yp, j.first ? yacc : _mm256_add_ps(_mm256_loadu_ps(yp), yacc));
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
    constexpr int RB = Pc >= 4 ? 1 : 4 / Pc;                                                  \
    for (; t + 4 <= t1; t += 4) {                                                             \
      int64_t nb = b0;                                                                        \
      for (; nb + RB <= b1; nb += RB) seg_avx512<RB, Pc, 4>(s, j, nb, t);                     \
      for (; nb < b1; ++nb) seg_avx512<1, Pc, 4>(s, j, nb, t);                                \
    }                                                                                         \
    for (; t < t1; ++t) {                                                                     \
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
// Entry c of a table adds the activations of c's set bits in increasing order, on every path.
void build_scalar(const float* x, const int32_t* gidx, const float* gscale, int64_t KX, const std::vector<Seg>& segs,
                  float* xb, float* tab, float* gsum) {
  for (int64_t k = 0; k < KX * 32; ++k) xb[k] = gidx[k] >= 0 ? x[gidx[k]] * gscale[k] : 0.f;
  for (int64_t q = 0; q < KX * 8; ++q) {
    const float* v = xb + 4 * q;
    float* t = tab + q * L;
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

template <typename I>
void sparse_scalar(const at::Half* vals, const I* cols, const int32_t* rowptr, const float* x, float* y, int64_t n0,
                   int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    float acc = 0.f;
    for (int32_t e = rowptr[n]; e < rowptr[n + 1]; ++e) acc += static_cast<float>(vals[e]) * x[cols[e]];
    y[n] += acc;
  }
}

#ifdef LLMBIN_X86
__attribute__((target("avx512f"))) void build_avx512(const float* x, const int32_t* gidx, const float* gscale,
                                                     int64_t KX, const std::vector<Seg>& segs, float* xb, float* tab,
                                                     float* gsum) {
  for (int64_t k = 0; k < KX * 32; k += L) {
    const __m512i idx = _mm512_loadu_si512(gidx + k);
    const __mmask16 valid = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512());
    const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, idx, x, 4);
    _mm512_storeu_ps(xb + k, _mm512_mul_ps(v, _mm512_loadu_ps(gscale + k)));
  }
  for (int64_t q = 0; q < KX * 8; ++q) {
    const float* v = xb + 4 * q;
    __m512 t = _mm512_maskz_mov_ps(0xAAAA, _mm512_set1_ps(v[0]));
    t = _mm512_mask_add_ps(t, 0xCCCC, t, _mm512_set1_ps(v[1]));
    t = _mm512_mask_add_ps(t, 0xF0F0, t, _mm512_set1_ps(v[2]));
    t = _mm512_mask_add_ps(t, 0xFF00, t, _mm512_set1_ps(v[3]));
    _mm512_storeu_ps(tab + q * L, t);
  }
  for (const Seg& s : segs)
    for (int64_t g = 0; g < s.ng; ++g) {
      const float* v = xb + (s.word0 + g * s.wpg) * 32;
      __m512 a0 = _mm512_loadu_ps(v), a1 = _mm512_loadu_ps(v + L);
      for (int64_t k = 32; k < s.wpg * 32; k += 32) {
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(v + k));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(v + k + L));
      }
      gsum[s.gsum0 + g] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
}

template <typename I>
__attribute__((target("avx512f"))) void sparse_avx512(const at::Half* vals, const I* cols, const int32_t* rowptr,
                                                      const float* x, float* y, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    int32_t e = rowptr[n];
    const int32_t end = rowptr[n + 1];
    __m512 acc = _mm512_setzero_ps();
    for (; e + L <= end; e += L) {
      __m512i idx;
      if constexpr (sizeof(I) == 2)
        idx = _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(cols + e)));
      else
        idx = _mm512_loadu_si512(cols + e);
      const __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(vals + e)));
      acc = _mm512_fmadd_ps(v, _mm512_i32gather_ps(idx, x, 4), acc);
    }
    float tail = 0.f;
    for (; e < end; ++e) tail += static_cast<float>(vals[e]) * x[cols[e]];
    y[n] += _mm512_reduce_add_ps(acc) + tail;
  }
}
#endif

// ---- GEMV threads: one token's matmul is 2-20 us of work, too short for OpenMP. A passive OpenMP
// team sleeps between such calls and waking it costs more than the second core gives. These helpers
// spin between calls instead, for at most kSpin after the last one, then block; so a decode loop
// keeps them hot and an idle process costs nothing. Off (no helpers) unless set_gemv_threads(n > 1).
class SpinPool {
 public:
  static SpinPool& get() {
    static SpinPool pool;
    return pool;
  }
  ~SpinPool() { resize(1); }

  int size() const { return static_cast<int>(threads_.size()) + 1; }
  int64_t runs() const { return runs_.load(); }  // calls split so far (tests: the pool did run)

  void resize(int n) {
    std::lock_guard<std::mutex> guard(resize_mutex_);
    n = std::max(1, n);
    if (n == size()) return;
    while (busy_.exchange(true)) std::this_thread::yield();  // not while another thread's call is split
    struct Release {
      std::atomic<bool>& flag;
      ~Release() { flag.store(false); }
    } release{busy_};
    stop_.store(true);
    { std::lock_guard<std::mutex> lock(m_); }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
    threads_.clear();
    stop_.store(false);
    done_.reset(new Done[n]);
    // a helper's first job is the next generation after this one, however late the thread starts
    const uint64_t start = gen_.load();
    for (int h = 0; h + 1 < n; ++h) {
      done_[h].gen.store(start);
      threads_.emplace_back([this, h, start] { loop(h, start); });
    }
  }

  // Runs fn(0..shards-1): shard 0 on the caller, shard h+1 on helper h. False (nothing run) when the pool is
  // busy with another caller or too small: the caller then does the work itself.
  bool run(int shards, const std::function<void(int)>& fn) {
    if (shards < 2 || shards > size() || busy_.exchange(true)) return false;
    runs_.fetch_add(1, std::memory_order_relaxed);
    job_ = &fn;
    shards_.store(shards, std::memory_order_relaxed);
    const uint64_t g = gen_.fetch_add(1) + 1;  // seq_cst, before reading sleepers_ (pairs with loop())
    if (sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lock(m_);
      cv_.notify_all();
    }
    fn(0);
    for (int h = 0; h + 1 < shards; ++h)
      while (done_[h].gen.load(std::memory_order_acquire) != g) pause();
    busy_.store(false);
    return true;
  }

 private:
  struct alignas(64) Done {
    std::atomic<uint64_t> gen{0};
  };
  static constexpr auto kSpin = std::chrono::milliseconds(5);

  static void pause() {
#ifdef LLMBIN_X86
    _mm_pause();
#endif
  }

  void loop(int h, uint64_t seen) {
    for (;;) {
      uint64_t g;
      auto since = std::chrono::steady_clock::now();
      int spins = 0;
      while ((g = gen_.load(std::memory_order_acquire)) == seen) {
        if (stop_.load(std::memory_order_relaxed)) return;
        pause();
        if (++spins % 1024 == 0 && std::chrono::steady_clock::now() - since > kSpin) {
          std::unique_lock<std::mutex> lock(m_);
          sleepers_.fetch_add(1);  // seq_cst, before re-reading gen_ (pairs with run())
          cv_.wait(lock, [&] { return gen_.load() != seen || stop_.load(); });
          sleepers_.fetch_sub(1);
          since = std::chrono::steady_clock::now();
        }
      }
      if (stop_.load()) return;
      seen = g;
      if (h + 1 < shards_.load(std::memory_order_relaxed)) (*job_)(h + 1);
      done_[h].gen.store(g, std::memory_order_release);
    }
  }

  std::vector<std::thread> threads_;
  std::unique_ptr<Done[]> done_{new Done[1]};
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> shards_{0}, sleepers_{0};
  std::atomic<int64_t> runs_{0};
  std::atomic<bool> stop_{false}, busy_{false};
  const std::function<void(int)>* job_ = nullptr;
  std::mutex m_, resize_mutex_;
  std::condition_variable cv_;
};

constexpr int64_t kMinShardWords = 256;  // words of one token's work per thread below which a GEMV is not split
constexpr int64_t kQuad = 4;              // row blocks per AVX-512 pass at most (run_seg's RB)

struct Plan;

// Live plans by key: compiled graphs call the op `llmbin_cpu::lut_matmul(x, key, n, isa)`, which takes
// only tensors and ints, so a plan is found by the key it got when it was built (and forgotten when freed).
std::mutex registry_mutex;
std::unordered_map<int64_t, const Plan*> registry;
std::atomic<int64_t> next_key{0};

// The repacked weights of one layer; forward() takes activations of any float dtype and shape [..., K].
struct Plan {
  at::Tensor gidx, gscale, sp_values, sp_colidx, sp_rowptr;
  std::vector<at::Tensor> words, scales, offsets;
  std::vector<Seg> segs;
  int64_t N, K, NB, KX, NG, per_block = 0;
  int64_t key = next_key++;

  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    std::lock_guard<std::mutex> lock(registry_mutex);
    registry.erase(key);
  }

  Plan(at::Tensor gidx_, at::Tensor gscale_, std::vector<at::Tensor> words_, std::vector<at::Tensor> scales_,
       std::vector<at::Tensor> offsets_, std::vector<int64_t> shape, at::Tensor spv, at::Tensor spc, at::Tensor spr,
       int64_t n_rows, int64_t k)
      : gidx(gidx_.contiguous()), gscale(gscale_.contiguous()), sp_values(spv), sp_colidx(spc), sp_rowptr(spr),
        words(words_), scales(scales_), offsets(offsets_), N(n_rows), K(k) {
    TORCH_CHECK(gidx.scalar_type() == at::kInt && gscale.scalar_type() == at::kFloat && gidx.numel() == gscale.numel());
    TORCH_CHECK(gidx.numel() % 32 == 0 && words.size() == scales.size() && words.size() == offsets.size() &&
                shape.size() == 2 * words.size() && !words.empty());
    KX = gidx.numel() / 32;
    NB = words[0].size(0);
    TORCH_CHECK(NB == (N + L - 1) / L, "row blocks do not match the number of rows");
    int64_t word0 = 0;
    NG = 0;
    for (size_t i = 0; i < words.size(); ++i) {
      const at::Tensor& w = words[i];
      const int64_t ng = shape[2 * i], wpg = shape[2 * i + 1];
      TORCH_CHECK(w.dim() == 4 && w.size(0) == NB && w.size(1) == ng * wpg && w.size(3) == L && w.is_contiguous() &&
                  w.scalar_type() == at::kInt, "bad words tensor for segment ", i);
      TORCH_CHECK(scales[i].is_contiguous() && scales[i].scalar_type() == at::kFloat &&
                  scales[i].numel() == NB * ng * w.size(2) * L, "bad scales for segment ", i);
      const bool off = offsets[i].numel() > 0;
      TORCH_CHECK(!off || (offsets[i].is_contiguous() && offsets[i].scalar_type() == at::kFloat &&
                           offsets[i].numel() == NB * ng * L), "bad offsets for segment ", i);
      segs.push_back(Seg{w.data_ptr<int32_t>(), scales[i].data_ptr<float>(),
                         off ? offsets[i].data_ptr<float>() : nullptr,
                         ng, wpg, w.size(2), word0, NG});
      word0 += ng * wpg;
      NG += ng;
      per_block += ng * wpg * w.size(2);
    }
    TORCH_CHECK(word0 == KX, "segments do not cover the gather index");
    std::lock_guard<std::mutex> lock(registry_mutex);
    registry[key] = this;
    if (sp_values.numel() > 0)
      TORCH_CHECK(sp_rowptr.numel() == N + 1 && sp_rowptr.scalar_type() == at::kInt &&
                  sp_values.scalar_type() == at::kHalf &&
                  (sp_colidx.scalar_type() == at::kShort || sp_colidx.scalar_type() == at::kInt) &&
                  sp_colidx.numel() == sp_values.numel());
  }

  // poison: fill the output and workspace with NaN first (tests: every value used must be written)
  at::Tensor forward(const at::Tensor& x_in, int64_t isa, bool poison) const {
    TORCH_CHECK(x_in.device().is_cpu() && x_in.dim() >= 1 && x_in.size(-1) == K,
                "expected CPU activations [..., ", K, "]");
    if (isa == kAuto) isa = best_isa();
    TORCH_CHECK(isa >= kScalar && isa <= best_isa(), "requested ISA ", isa, " is not supported by this CPU");
    // A decode step makes ~200 of these calls of a few us each: float32 contiguous input, an output in its final
    // shape and a reused per-thread workspace skip the ATen calls (~0.3-0.5 us each) a general input needs.
    const bool direct = x_in.scalar_type() == at::kFloat && x_in.is_contiguous();
    const at::Tensor x = direct ? x_in : x_in.reshape({-1, K}).to(at::kFloat).contiguous();
    const int64_t M = x.numel() / K;
    std::vector<int64_t> sizes = x_in.sizes().vec();
    sizes.back() = N;
    const bool in_place = direct && NB * L == N;  // the kernel can write the returned tensor itself
    at::Tensor y = in_place ? at::empty(sizes, x.options()) : at::empty({M, NB * L}, x.options());
    // Tables take 16 floats per activation: bound their memory by doing tokens in chunks.
    const int64_t chunk = std::min(M, std::max<int64_t>(4, (int64_t{8} << 20) / (KX * TW * 4)));
    const int64_t wstride = KX * TW + KX * 32 + NG;
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
    for (int64_t m0 = 0; m0 < M; m0 += chunk) {
      const int64_t mc = std::min(chunk, M - m0);
      float* wp = wbase;
      float* y0 = y.data_ptr<float>() + m0 * NB * L;
      // per token: tables, then the gathered activations, then the group sums
      auto build = [&](int64_t t, float* base) {
#ifdef LLMBIN_X86
        if (isa == kAvx512) {
          build_avx512(xp + (m0 + t) * K, gidx.data_ptr<int32_t>(), gscale.data_ptr<float>(), KX, segs,
                       base + KX * TW, base, base + KX * TW + KX * 32);
          return;
        }
#endif
        build_scalar(xp + (m0 + t) * K, gidx.data_ptr<int32_t>(), gscale.data_ptr<float>(), KX, segs,
                     base + KX * TW, base, base + KX * TW + KX * 32);
      };
      auto blocks = [&](const Job& j, int64_t b0, int64_t b1) {
        Job js = j;
        for (const Seg& s : segs) {
          run_seg(s, js, b0, b1, 0, mc, isa);
          js.first = false;
        }
        if (!sparse) return;
        const int64_t n0 = b0 * L, n1 = std::min(b1 * L, N);
        for (int64_t t = 0; t < mc; ++t) run_sparse(xp + (m0 + t) * K, j.y + t * NB * L, n0, n1, isa);
      };
      // Threads split the row blocks at multiples of kQuad (the most blocks one kernel pass takes), so every
      // block is summed in the same order however many threads share the work: results are bit-identical.
      const int64_t NQ = (NB + kQuad - 1) / kQuad;
      auto split = [&](int i, int shards) { return std::min(NB, NQ * i / shards * kQuad); };
      // One token on the spinning pool: every thread builds its own copy of the tables (~0.3 us), which is
      // faster than reading the caller's from another core's cache.
      SpinPool& pool = SpinPool::get();
      const int shards = static_cast<int>(std::min<int64_t>({pool.size(), NQ, per_block * NB * mc / kMinShardWords}));
      const bool pooled = mc == 1 && shards > 1 && pool.run(shards, [&](int i) {
        thread_local std::vector<float> own;
        float* base = wp;
        if (i > 0) {
          if (static_cast<int64_t>(own.size()) < wstride) own.resize(wstride);
          base = own.data();
        }
        build(0, base);
        blocks(Job{NB, wstride, base, base + KX * TW + KX * 32, y0, true}, split(i, shards), split(i + 1, shards));
      });
      if (pooled) continue;
      // building a token's tables is ~1 cycle per activation: only worth threads for many tokens
      at::parallel_for(0, mc, std::max<int64_t>(1, 32768 / (KX * 32)), [&](int64_t a, int64_t b) {
        for (int64_t t = a; t < b; ++t) build(t, wp + t * wstride);
      });
      // a block costs ~10 cycles per word and token with AVX-512: stay serial below ~2k words of work
      const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, per_block * mc));
      const Job j{NB, wstride, wp, wp + KX * TW + KX * 32, y0, true};
      at::parallel_for(0, NQ, std::max<int64_t>(1, grain / kQuad),
                       [&](int64_t q0, int64_t q1) { blocks(j, q0 * kQuad, std::min(q1 * kQuad, NB)); });
    }
    if (in_place) return y;
    at::Tensor out = NB * L == N ? y : y.narrow(1, 0, N);
    return out.to(x_in.scalar_type()).reshape(sizes);
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

at::Tensor lut_matmul_op(const at::Tensor& x, int64_t key, int64_t n, int64_t isa) {
  const Plan* plan;
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    auto it = registry.find(key);
    TORCH_CHECK(it != registry.end(), "llmbin cpu plan ", key, " was freed; a compiled graph outlived its model");
    plan = it->second;
  }
  TORCH_CHECK(plan->N == n, "plan ", key, " has ", plan->N, " rows, not ", n);
  return plan->forward(x, isa, false).contiguous();  // compiled graphs assume the fake's contiguous strides
}

}  // namespace

TORCH_LIBRARY(llmbin_cpu, m) { m.def("lut_matmul(Tensor x, int key, int n, int isa) -> Tensor"); }
TORCH_LIBRARY_IMPL(llmbin_cpu, CPU, m) { m.impl("lut_matmul", &lut_matmul_op); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Plan>(m, "Plan")
      .def(pybind11::init<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
                          std::vector<at::Tensor>, std::vector<int64_t>, at::Tensor, at::Tensor, at::Tensor, int64_t,
                          int64_t>())
      .def_readonly("key", &Plan::key)
      .def("forward", &Plan::forward, pybind11::arg("x"), pybind11::arg("isa") = 0, pybind11::arg("poison") = false,
           pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("best_isa", &best_isa, "1 scalar, 2 avx2, 3 avx512");
  m.def("set_gemv_threads", [](int n) { SpinPool::get().resize(n); },
        "threads for one-token matmuls (1: the caller only; more: spinning helpers)");
  m.def("gemv_threads", [] { return SpinPool::get().size(); });
  m.def("gemv_pool_runs", [] { return SpinPool::get().runs(); });
}
