"""RTN: per-group asymmetric min-max round-to-nearest, no calibration statistics needed."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import LlmbinError
from .base import QuantMethod, QuantResult, register_method
from .solvers.uniform_quantizer import FITS, UniformColumnQuantizer
from ..formats.uniform import SUPPORTED_BITS


@dataclass
class RTNParams:
    bits: int = 4
    group_size: int = 128  # -1: one group per row
    fit: str = "minmax"  # minmax | mse (per group, the clipped range with the least squared error)

    def __post_init__(self):
        check_bits(self.bits)
        check_fit(self.fit)


def check_fit(fit: str) -> None:
    if fit not in FITS:
        raise LlmbinError(f"fit={fit!r} is not supported; choose one of {', '.join(FITS)}")


def check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise LlmbinError(f"bits={bits} is not supported; choose one of {', '.join(map(str, SUPPORTED_BITS))}")


def rtn_format(weight, bits: int, group_size: int, fit: str = "minmax"):
    quantizer = UniformColumnQuantizer(*weight.shape, bits, group_size, fit)
    quantizer.quantize_all(weight.float())
    return quantizer.to_format()


@register_method
class RTN(QuantMethod):
    name = "rtn"
    summary = "round-to-nearest integer baseline (asymmetric min-max per group), 2/3/4/8 bits"
    params_cls = RTNParams
    stats = frozenset()

    def quantize_linear(self, name, weight, stats, generator) -> QuantResult:
        check_bits(self.params.bits)
        return QuantResult(rtn_format(weight, self.params.bits, self.params.group_size, self.params.fit))

    def fallback_linear(self, name, weight) -> QuantResult:
        return self.quantize_linear(name, weight, None, None)
