"""DB-LLM: flexible dual binarization with GPTQ-style reconstruction.

Each weight group (64 input columns of one row) is w_hat = a1*b1 + a2*b2 with two {0,1} planes,
initialised at the 2-bit levels {-s, 0, s, 2s} (s = max|w|/2) and refitted by (optionally
diag(H)-weighted) least squares (solvers/dual_binarize.py). The quantizer runs inside the GPTQ
column loop: scales are fitted on the already-updated weights at each group's first column, and
every column's rounding error is fed back through the inverse-Hessian Cholesky factor.

Storage: BitPlaneFormat with 2 planes, scales [2, N, K/64] = (a1, a2), no offsets: 2 bits per
weight in the paper's convention, 2.5 all-in (two float16 scales per 64 weights).

DB-LLM's deviation-aware distillation is the generic stage of every method (llmbin/distill; recipe
section `distill:`, `--set distill.enabled=true`): for this format it trains the group scales (a1, a2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import LlmbinError
from .base import QuantMethod, QuantResult, register_method
from .solvers.dual_binarize import DualBinaryColumnQuantizer
from .solvers.gptq_loop import gptq_quantize, prepare_hessian

PAPER_BITS = 2.0


@dataclass
class DBLLMParams:
    group_size: int = 64
    refit_iters: int = 5  # least-squares refit + re-assign rounds per group (each kept only if it helps)
    hessian_weighted: bool = True  # weight the refit's columns by diag(H) (damped)
    mirror_init: bool = True  # llmbin option: fit each group from both grid orientations, keep the smaller error
    blocksize: int = 128
    percdamp: float = 0.01
    act_order: bool = False

    def __post_init__(self):
        if self.refit_iters < 0:
            raise LlmbinError(f"refit_iters must be >= 0, not {self.refit_iters}")


@register_method
class DBLLM(QuantMethod):
    name = "dbllm"
    summary = "DB-LLM flexible dual binarization (2 {0,1} planes, group 64) with GPTQ feedback"
    params_cls = DBLLMParams

    def _quantizer(self, weight, col_weights=None) -> DualBinaryColumnQuantizer:
        p = self.params
        return DualBinaryColumnQuantizer(*weight.shape, p.group_size, p.refit_iters, col_weights, p.mirror_init)

    def quantize_linear(self, name, weight, stats, generator) -> QuantResult:
        p = self.params
        col_weights = None
        if p.hessian_weighted:
            _, damped, _ = prepare_hessian(weight[:1], stats.hessian, p.percdamp)  # dead columns get H_jj = 1
            col_weights = torch.diag(damped).float()
        quantizer = self._quantizer(weight, col_weights)
        _, loss = gptq_quantize(weight, stats.hessian, quantizer, p.blocksize, p.percdamp, p.act_order)
        return QuantResult(quantizer.to_format(PAPER_BITS), {"loss": loss})

    def fallback_linear(self, name, weight) -> QuantResult:
        quantizer = self._quantizer(weight)
        quantizer.quantize_all(weight)
        return QuantResult(quantizer.to_format(PAPER_BITS), {"fallback": "dual binarization without feedback"})

    def model_card_notes(self) -> str:
        p = self.params
        lines = [
            f"DB-LLM flexible dual binarization: per row and group of {p.group_size} input columns, "
            "w = a1*b1 + a2*b2 with two {0,1} bit planes and two float16 scales (initial levels {-s, 0, s, 2s}, "
            f"s = max|w|/2{'; per group the fit also runs from the mirrored grid {-2s, -s, 0, s} and the orientation with the smaller error is kept' if p.mirror_init else ''}; "
            f"up to {p.refit_iters} least-squares refit rounds"
            f"{', diag(H)-weighted' if p.hessian_weighted else ''}), inside the GPTQ column loop "
            "(Hessian-guided error feedback). 2 bits per weight (paper), 2.5 all-in at group 64.",
        ]
        return "\n".join(lines)
