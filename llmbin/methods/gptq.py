"""GPTQ: integer quantization with Hessian-guided error feedback (Frantar et al., 2023)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import QuantMethod, QuantResult, register_method
from .rtn import check_bits, check_fit, rtn_format
from .solvers.gptq_loop import gptq_quantize
from .solvers.uniform_quantizer import UniformColumnQuantizer


@dataclass
class GPTQParams:
    bits: int = 4
    group_size: int = 128  # -1: one group per row
    blocksize: int = 128
    percdamp: float = 0.01
    # act-order by default: on SmolLM2 (v1 text) GPTQ-4 g128 in column order lost to RTN-4 g128 (35.9 vs 32.0,
    # damping 0.1/1.0 and static groups did not help); visiting columns by decreasing H_jj beat RTN (31.2)
    # (benchmarks/results/compare-v2/README.md). Groups then use parameters fitted before the feedback.
    act_order: bool = True
    static_groups: bool = False
    fit: str = "minmax"  # minmax | mse: each group's range clipped to the least diag(H)-weighted squared error

    def __post_init__(self):
        check_bits(self.bits)
        check_fit(self.fit)


@register_method
class GPTQ(QuantMethod):
    name = "gptq"
    summary = "GPTQ integer quantization with Hessian error feedback, 2/3/4/8 bits, groups, act-order"
    params_cls = GPTQParams

    def quantize_linear(self, name, weight, stats, generator) -> QuantResult:
        p = self.params
        check_bits(p.bits)
        quantizer = UniformColumnQuantizer(*weight.shape, p.bits, p.group_size, p.fit, torch.diag(stats.hessian))
        _, loss = gptq_quantize(weight, stats.hessian, quantizer, p.blocksize, p.percdamp, p.act_order, p.static_groups)
        return QuantResult(quantizer.to_format(), {"loss": loss})

    def fallback_linear(self, name, weight) -> QuantResult:
        return QuantResult(rtn_format(weight, self.params.bits, self.params.group_size, self.params.fit),
                           {"fallback": "rtn"})
