// Python and torch.compile faces of the lookup-table product: the Plan class (pybind11), the
// `llmbin_cpu::lut_matmul` op that compiled graphs call (and `lut_matmul_many`, several products of one input), and
// the spinning pool's size.
#include <torch/extension.h>
#include <torch/library.h>

#include "fused_products.h"
#include "lut_plan.h"
#include "uniform_plan.h"

namespace {

const PackedPlan* find_plan(int64_t key, int64_t n) {
  const PackedPlan* plan;
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    auto it = registry.find(key);
    TORCH_CHECK(it != registry.end(), "llmbin cpu plan ", key, " was freed; a compiled graph outlived its model");
    plan = it->second;
  }
  TORCH_CHECK(plan->rows() == n, "plan ", key, " has ", plan->rows(), " rows, not ", n);
  return plan;
}

at::Tensor lut_matmul_op(const at::Tensor& x, int64_t key, int64_t n, int64_t isa) {
  return find_plan(key, n)->forward(x, isa, false).contiguous();  // compiled graphs assume the fake's contiguous strides
}

// Up to 3 products of x side by side (key2 < 0: 2): a schema of plain ints, which compiled C++ wrappers call
// without Python (an int[] or Tensor[] signature went through a Python call per use).
at::Tensor lut_matmul_many_op(const at::Tensor& x, int64_t key0, int64_t n0, int64_t key1, int64_t n1, int64_t key2,
                              int64_t n2, int64_t isa) {
  std::vector<const PackedPlan*> plans{find_plan(key0, n0), find_plan(key1, n1)};
  if (key2 >= 0) plans.push_back(find_plan(key2, n2));
  return products_of_one_input(plans, x, isa);
}

}  // namespace

TORCH_LIBRARY(llmbin_cpu, m) {
  m.def("lut_matmul(Tensor x, int key, int n, int isa) -> Tensor");
  m.def("lut_matmul_many(Tensor x, int key0, int n0, int key1, int n1, int key2, int n2, int isa) -> Tensor");
}
TORCH_LIBRARY_IMPL(llmbin_cpu, CPU, m) {
  m.impl("lut_matmul", &lut_matmul_op);
  m.impl("lut_matmul_many", &lut_matmul_many_op);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Plan>(m, "Plan")
      .def(pybind11::init<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
                          std::vector<at::Tensor>, std::vector<int64_t>, at::Tensor, at::Tensor, at::Tensor, int64_t,
                          int64_t, bool>())
      .def_readonly("key", &Plan::key)
      .def("forward", &Plan::forward, pybind11::arg("x"), pybind11::arg("isa") = 0, pybind11::arg("poison") = false,
           pybind11::call_guard<pybind11::gil_scoped_release>());
  pybind11::class_<UniformPlan>(m, "UniformPlan")
      .def(pybind11::init<at::Tensor, at::Tensor, at::Tensor, int64_t, int64_t, int64_t, int64_t>(), pybind11::arg("codes"),
           pybind11::arg("scales"), pybind11::arg("zeros"), pybind11::arg("n"), pybind11::arg("k"), pybind11::arg("group"),
           pybind11::arg("bits"))
      .def_readonly("key", &UniformPlan::key)
      .def("block_tile", &UniformPlan::block_tile, pybind11::arg("nb"))
      .def("forward", &UniformPlan::forward, pybind11::arg("x"), pybind11::arg("isa") = 0,
           pybind11::arg("poison") = false, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("uniform_supported", &uniform_supported, "whether integer-code layers can run on their own kernel (AVX2 or AVX512-VNNI)");
  m.def("uniform_isa", [] { return vnni_supported() ? std::string("avx512-vnni") : avx2_supported() ? std::string("avx2") : std::string(); },
        "which vector path the integer-code kernel takes here");
  m.def("best_isa", &best_isa, "1 scalar, 2 avx2, 3 avx512");
  m.def("bf16_fill_supported", &bf16_fill_supported, "whether the bf16 tile fills can run (AVX512-BF16)");
  m.def("gemm_supported", &gemm_supported, "whether many-token products can run as dequantize + bf16 brgemm");
  m.def("set_gemm_min_tokens", [](int64_t n) { gemm_min_tokens() = std::max<int64_t>(2, n); },
        "tokens from which a product runs as dequantize + brgemm instead of on the lookup tables");
  m.def("set_gemm_span", [](int64_t n) {
          TORCH_CHECK(n >= 1 && n <= kMaxSpan, "gemm span: 1 to ", kMaxSpan, " blocks of 32, not ", n);
          gemm_span() = n;
        },
        "blocks of 32 slots that share one activation scale in the integer GEMM");
  m.def("gemm_span", [] { return gemm_span(); });
  m.attr("GEMM_MAX_SPAN") = kMaxSpan;
  m.def("gemm_min_tokens", [] { return gemm_min_tokens(); });
  m.def("set_int_gemm_rounding", [](const std::string& r) {
          TORCH_CHECK(r == "int16" || r == "binarized" || r == "int8", "rounding: int16, binarized or int8, not ", r);
          int_gemm_rounding() = r == "int16" ? IntRounding::kInt16 : r == "int8" ? IntRounding::kInt8
                                                                                 : IntRounding::kBinarizedInt8;
        },
        "how the integer GEMM (auto path) rounds activations: int16 (vpdpwssd), int8 (vpdpbusd), or binarized "
        "(int8 on the channels a salient block keeps outliers from, int16 elsewhere)");
  m.def("int_gemm_rounding", [] {
    const IntRounding r = int_gemm_rounding();
    return std::string(r == IntRounding::kInt16 ? "int16" : r == IntRounding::kInt8 ? "int8" : "binarized");
  });
  m.def("set_gemv_threads", [](int n) { requested_threads() = std::max(1, std::min(n, SpinPool::kMaxHelpers + 1)); },
        "threads for the calling thread's one-token matmuls (1: the caller only; more: its own spinning helpers)");
  m.def("gemv_threads", [] { return requested_threads(); }, "the calling thread's setting");
  m.def("gemv_pool_helpers", [] { return SpinPool::mine().helpers(); }, "helper threads of the calling thread's pool");
  m.def("gemv_pool_runs", [] { return SpinPool::mine().runs(); }, "products the calling thread's pool split");
}
