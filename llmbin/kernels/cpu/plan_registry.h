// What every repacked layer is to the compiled op: a plan found by its key.
//
// Compiled graphs call `llmbin_cpu::lut_matmul(x, key, n, isa)`, which takes only tensors and ints, so a plan is
// found by the key it got when it was built (and forgotten when freed). Bit-plane layers (lut_plan.h) and integer
// layers (uniform_plan.h) are both plans.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace {

struct PackedPlan;

std::mutex registry_mutex;
std::unordered_map<int64_t, const PackedPlan*> registry;
std::atomic<int64_t> next_key{0};

struct PackedPlan {
  const int64_t key = next_key++;

  PackedPlan() = default;
  PackedPlan(const PackedPlan&) = delete;
  PackedPlan& operator=(const PackedPlan&) = delete;
  virtual ~PackedPlan() { unpublish(); }

  // x [..., K] of any float dtype -> [..., rows()] in x's dtype; poison: NaN-fill outputs and workspace first
  virtual at::Tensor forward(const at::Tensor& x, int64_t isa, bool poison) const = 0;
  virtual int64_t rows() const = 0;

  // called last by a constructor that checked everything: a refused plan is never reachable
  void publish() const {
    std::lock_guard<std::mutex> lock(registry_mutex);
    registry[key] = this;
  }
  void unpublish() const {
    std::lock_guard<std::mutex> lock(registry_mutex);
    registry.erase(key);
  }
};

}  // namespace
