// Stress of spin_pool.h on its own (no torch), for ThreadSanitizer: several owner threads at once, each splitting
// jobs over its own pool with thread counts that change from call to call (the pool grows while others run),
// shard counts below the pool size, helpers that fall asleep between bursts, and a fork() in the middle whose
// child uses its own pool. Every call checks that each shard ran exactly once for that call.
//   g++ -std=c++17 -O1 -g -fsanitize=thread -pthread spin_pool_stress.cpp -o spin_pool_tsan && ./spin_pool_tsan
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "../../llmbin/kernels/cpu/spin_pool.h"

static std::atomic<long> failures{0}, calls{0};

static void owner(int seed, int rounds) {
  unsigned state = 12345u + seed;
  auto next = [&] { state = state * 1103515245u + 12345u; return (state >> 16) & 0x7fff; };
  for (int r = 0; r < rounds; ++r) {
    const int shards = 1 + next() % 6;  // 1..6: below, at and above the pool's current size
    std::vector<std::atomic<int>> hits(shards);
    for (auto& h : hits) h.store(0);
    const std::function<void(int)> job = [&](int i) { hits[i].fetch_add(1); };
    if (!SpinPool::mine().run(shards, job)) job(0);
    for (int i = 0; i < shards; ++i)
      if (hits[i].load() != (shards < 2 && i > 0 ? 0 : 1)) failures.fetch_add(1);
    calls.fetch_add(1);
    if (r % 500 == 499) std::this_thread::sleep_for(std::chrono::milliseconds(12));  // let helpers block
  }
}

int main() {
  std::vector<std::thread> owners;
  for (int t = 0; t < 4; ++t) owners.emplace_back(owner, t, 1500);
  owner(99, 500);  // the main thread has a pool too, used before the fork
  const pid_t pid = fork();
  if (pid == 0) {  // the child: none of the parent's helper threads exist here
    owner(7, 200);
    std::_Exit(failures.load() == 0 ? 0 : 3);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  for (auto& t : owners) t.join();
  const bool child_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  std::printf("calls %ld, wrong shard counts %ld, forked child %s\n", calls.load(), failures.load(),
              child_ok ? "ok" : "FAILED");
  return failures.load() == 0 && child_ok ? 0 : 1;
}
