// Helper threads for one-token products (lut_plan.h).
//
// One token's matmul is 2-20 us of work, too short for OpenMP: a passive OpenMP team sleeps between such calls and
// waking it costs more than the second core gives. These helpers spin between calls instead, for at most kSpin
// after the last one, then block; so a decode loop keeps them hot and an idle process costs nothing.
//
// Ownership and safety:
// - every calling thread has a pool of its own (SpinPool::mine(), thread_local) and asks for its own thread count
//   (requested_threads(), set by that thread only), so two decoders in two threads never share, resize or wait on
//   each other's helpers, and nothing is process-global but the fork counter;
// - a helper runs only a job addressed to it: the caller writes helper h's slot (job, shard) and then its
//   generation, and waits until every helper it addressed has acknowledged that generation, so a helper that
//   wakes late can never run another call's job, and the job (on the caller's stack) outlives every use;
// - helpers are added on demand and never removed while their owner lives; the owner's thread exit stops and
//   joins them (no spinning);
// - fork(): the child has none of the parent's helper threads (and maybe a mutex a helper held). The fork handler
//   bumps a counter; a pool that sees it changed abandons its old state without touching it and starts anew.
// Header-only and free of torch, so benchmarks/sanitizers/spin_pool_tsan.cpp runs it under ThreadSanitizer.
#pragma once

#include <pthread.h>

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
#endif

namespace {

inline std::atomic<uint64_t>& fork_generation() {
  static std::atomic<uint64_t> generation{0};
  static const bool registered = [] {
    pthread_atfork(nullptr, nullptr, [] { fork_generation().fetch_add(1); });
    return true;
  }();
  (void)registered;
  return generation;
}

// Threads the calling thread's one-token products are split over (1: the caller alone).
inline int& requested_threads() {
  thread_local int threads = 1;
  return threads;
}

class SpinPool {
 public:
  static constexpr int kMaxHelpers = 63;
  using Job = std::function<void(int)>;

  static SpinPool& mine() {
    thread_local SpinPool pool;
    return pool;
  }

  ~SpinPool() {
    if (state_->born != fork_generation().load()) return;  // forked child: the helpers do not exist
    state_->stop.store(true);
    { std::lock_guard<std::mutex> lock(state_->mutex); }
    state_->wake.notify_all();
    for (auto& thread : state_->threads) thread.join();
  }

  int helpers() const { return static_cast<int>(state_->threads.size()); }
  int64_t runs() const { return runs_; }

  // Runs job(0..shards-1): shard 0 on the caller, shard h+1 on helper h. False (nothing run) when shards < 2.
  bool run(int shards, const Job& job) {
    if (shards < 2) return false;
    shards = std::min(shards, kMaxHelpers + 1);
    if (state_->born != fork_generation().load()) restart();
    State& st = *state_;
    while (static_cast<int>(st.threads.size()) < shards - 1) {
      const int h = static_cast<int>(st.threads.size());
      st.threads.emplace_back([&st, h] { loop(st, h); });
    }
    const uint64_t generation = ++generation_;
    for (int h = 0; h + 1 < shards; ++h) {
      Slot& slot = st.slots[h];
      slot.job = &job;
      slot.shard = h + 1;
      slot.posted.store(generation);  // seq_cst, before reading sleepers (pairs with loop())
    }
    if (st.sleepers.load() > 0) {
      std::lock_guard<std::mutex> lock(st.mutex);
      st.wake.notify_all();
    }
    job(0);
    for (int h = 0; h + 1 < shards; ++h)
      while (st.slots[h].done.load(std::memory_order_acquire) != generation) pause();
    ++runs_;
    return true;
  }

 private:
  struct alignas(64) Slot {
    std::atomic<uint64_t> posted{0};  // generation of the last job addressed to this helper
    std::atomic<uint64_t> done{0};    // generation of the last job it finished
    const Job* job = nullptr;
    int shard = 0;
  };
  struct State {
    Slot slots[kMaxHelpers];
    std::vector<std::thread> threads;
    std::mutex mutex;
    std::condition_variable wake;
    std::atomic<int> sleepers{0};
    std::atomic<bool> stop{false};
    uint64_t born = fork_generation().load();  // the process generation this state's threads belong to
  };
  static constexpr auto kSpin = std::chrono::milliseconds(5);

  SpinPool() : state_(new State) {}

  static void pause() {
#if defined(__x86_64__) || defined(_M_X64)
    _mm_pause();
#endif
  }

  // After fork(): the old state's threads do not exist and its mutex may be held by one of them; leave it alone.
  void restart() {
    state_.release();  // deliberately leaked: destroying it would join or unlock what is not there
    state_.reset(new State);
    generation_ = 0;
  }

  static void loop(State& st, int h) {
    Slot& slot = st.slots[h];
    uint64_t seen = 0;
    for (;;) {
      auto since = std::chrono::steady_clock::now();
      int spins = 0;
      while (slot.posted.load(std::memory_order_acquire) == seen) {
        if (st.stop.load(std::memory_order_relaxed)) return;
        pause();
        if (++spins % 1024 == 0 && std::chrono::steady_clock::now() - since > kSpin) {
          std::unique_lock<std::mutex> lock(st.mutex);
          st.sleepers.fetch_add(1);  // seq_cst, before re-reading posted (pairs with run())
          st.wake.wait(lock, [&] { return slot.posted.load() != seen || st.stop.load(); });
          st.sleepers.fetch_sub(1);
          since = std::chrono::steady_clock::now();
        }
      }
      if (st.stop.load()) return;
      const uint64_t generation = slot.posted.load(std::memory_order_acquire);
      (*slot.job)(slot.shard);
      seen = generation;
      slot.done.store(generation, std::memory_order_release);
    }
  }

  std::unique_ptr<State> state_;
  uint64_t generation_ = 0;  // owner thread only
  int64_t runs_ = 0;         // calls split so far (tests: the pool did run)
};

}  // namespace
