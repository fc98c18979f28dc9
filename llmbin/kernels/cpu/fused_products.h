// Several products of the same activations in one call: what a compiled decode step's q/k/v and gate/up
// projections become (runtime/fused_products.py rewrites the graph). Integer-code layers that share K and group size
// prepare the token once and split all their row blocks over the pool in one run: per layer a dispatch, a pool
// round trip and an activation pass fewer, and small layers (SmolLM2's 192-row k/v: 3 passes on 2 threads, 2:1) no
// longer run unbalanced alone. Anything else runs plan by plan, as the single op would.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "uniform_plan.h"

namespace {

// One token through integer-code layers that share K and group size, into y [sum of the layers' padded rows]:
// -> false (nothing computed) where they cannot share the token's preparation.
bool uniform_many(const std::vector<const UniformPlan*>& plans, const at::Tensor& x, int64_t isa, at::Tensor& y) {
  const UniformPlan& a = *plans[0];
  if (x.scalar_type() != at::kFloat || !x.is_contiguous() || x.numel() != a.K || !(isa == kAuto || isa == kAvx512 || isa == kAvx2))
    return false;
  for (const UniformPlan* p : plans)
    if (p->K != a.K || p->L.KB != a.L.KB || p->L.bpg != a.L.bpg || p->L.ng != a.L.ng) return false;
  const int64_t vec = isa == kAvx2 || !vnni_supported() ? kAvx2 : kAvx512;
  if (vec == kAvx2 && !avx2_supported()) return false;
  const UniformLayer& L = a.L;
  std::vector<float> prep(static_cast<size_t>(L.KB * 16 + L.KB + L.ng));
  int16_t* xq = reinterpret_cast<int16_t*>(prep.data());
  float *xs = prep.data() + L.KB * 16, *xsum = xs + L.KB;
  a.prepare_token(x.data_ptr<float>(), vec, xq, xs, xsum);
  std::vector<int64_t> first{0}, at{0};  // plan j: global passes [first[j], first[j + 1]), outputs from at[j]
  int64_t lines = 0;
  for (const UniformPlan* p : plans) {
    first.push_back(first.back() + (p->L.NB + kUniformPass - 1) / kUniformPass);
    at.push_back(at.back() + p->L.NB * kRows);
    lines += p->L.NB * p->L.lines;
  }
  y = at::empty({at.back()}, x.options());
  float* yp = y.data_ptr<float>();
  const int64_t passes = first.back();
  const auto run = [&](int i, int shards) {
    const int64_t g0 = passes * i / shards, g1 = passes * (i + 1) / shards;
    for (size_t j = 0; j < plans.size(); ++j) {
      const int64_t lo = std::max(g0, first[j]), hi = std::min(g1, first[j + 1]);
      if (lo < hi)
        plans[j]->rows_of(xq, xs, xsum, (lo - first[j]) * kUniformPass,
                          std::min(plans[j]->L.NB, (hi - first[j]) * kUniformPass), yp + at[j], vec);
    }
  };
  const int shards = one_token_shards(passes, lines);
  if (shards <= 1 || !SpinPool::mine().run(shards, [&](int i) { run(i, shards); })) run(0, 1);
  bool padded = false;
  for (const UniformPlan* p : plans) padded |= p->L.NB * kRows != p->N;
  if (padded) {  // drop each layer's padding rows (layers of whole row blocks, the usual case, need no copy)
    std::vector<at::Tensor> parts;
    for (size_t j = 0; j < plans.size(); ++j) parts.push_back(y.narrow(0, at[j], plans[j]->N));
    y = at::cat(parts);
  }
  return true;
}

// [..., sum of the plans' rows]: the products of x by each plan, side by side.
at::Tensor products_of_one_input(const std::vector<const PackedPlan*>& plans, const at::Tensor& x, int64_t isa) {
  std::vector<const UniformPlan*> uniform;
  for (const PackedPlan* p : plans)
    if (const auto* u = dynamic_cast<const UniformPlan*>(p)) uniform.push_back(u);
  std::vector<int64_t> sizes = x.sizes().vec();
  at::Tensor y;
  if (uniform.size() == plans.size() && uniform_many(uniform, x, isa, y)) {
    sizes.back() = y.size(0);
    return y.view(sizes);
  }
  std::vector<at::Tensor> parts;
  for (const PackedPlan* p : plans) parts.push_back(p->forward(x, isa, false));
  return at::cat(parts, -1).contiguous();
}

}  // namespace
