// Helper threads for one-token products (lut_plan.h): see SpinPool.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LLMBIN_X86 1
#endif

namespace {

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

}  // namespace
