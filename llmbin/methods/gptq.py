"""GPTQ: integer quantization with Hessian-guided error feedback (Frantar et al., 2023)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import QuantMethod, QuantResult, register_method
from .rtn import check_bits, rtn_format
from .solvers.gptq_loop import gptq_quantize
from .solvers.uniform_quantizer import UniformColumnQuantizer


@dataclass
class GPTQParams:
    bits: int = 4
    group_size: int = 128  # -1: one group per row
    blocksize: int = 128
    percdamp: float = 0.01
    act_order: bool = False
    static_groups: bool = False

    def __post_init__(self):
        check_bits(self.bits)


@register_method
class GPTQ(QuantMethod):
    name = "gptq"
    summary = "GPTQ integer quantization with Hessian error feedback, 2/3/4/8 bits, groups, act-order"
    params_cls = GPTQParams

    def quantize_linear(self, name, weight, stats, generator) -> QuantResult:
        p = self.params
        check_bits(p.bits)
        quantizer = UniformColumnQuantizer(*weight.shape, p.bits, p.group_size)
        _, loss = gptq_quantize(weight, stats.hessian, quantizer, p.blocksize, p.percdamp, p.act_order, p.static_groups)
        return QuantResult(quantizer.to_format(), {"loss": loss})

    def fallback_linear(self, name, weight) -> QuantResult:
        return QuantResult(rtn_format(weight, self.params.bits, self.params.group_size), {"fallback": "rtn"})
