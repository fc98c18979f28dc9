"""PB-LLM: partial binarization with Hessian-guided reconstruction (Shang et al., ICLR 2024).

Per linear: a fraction `salient_ratio` of the weights, chosen once on the original W by W^2/d_j^2
(or |W|) over the whole matrix, is kept at `high_bits` (per-row min-max grid fitted on the full
original row); every other weight is binarized per row (mu, alpha fixed before the loop). The GPTQ
column loop then quantizes column by column with q = salient ? high(w) : binary(w) and pushes each
column's error onto the later columns. Stored as one sign plane plus the salient part, either as a
sparse CSR correction (`bitplane`, native CPU kernel) or as a bitmap + codes (`masked`, smaller).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import LlmbinError
from ..formats import BitPlaneFormat, SparseCorrection
from ..formats.masked import MaskedBinaryFormat
from .base import QuantMethod, QuantResult, register_method
from .solvers.binarize import VARIANTS, arb_refine, binarize, binary_levels, binary_mean_scale
from .solvers.gptq_loop import gptq_quantize, prepare_hessian
from .solvers.quant_grid import dequantize_codes, minmax_params, quantize_codes
from .solvers.saliency import METRICS, saliency_scores, top_fraction_mask

FORMS = ("auto", "sparse", "bitmap")


@dataclass
class PBLLMParams:
    salient_ratio: float = 0.1
    high_bits: int = 8
    metric: str = "hessian"  # hessian: W^2 / U_jj^2 | magnitude: |W|
    # code: mu/alpha over all columns with salient weights zeroed (the reference code, BENCH.md's figures; on SmolLM2
    # protocol v1 1373 against the paper variant's 7143) | paper: over the non-salient weights only (the equations)
    variant: str = "code"
    gptq: bool = True  # Hessian error feedback; false: plain rounding
    blocksize: int = 128
    percdamp: float = 0.01
    arb_iters: int = 0  # optional ARB-LLM refinement rounds of mu/alpha before the loop (0 = PB-LLM as published)
    salient_form: str = "auto"  # auto (smaller of the two) | sparse (CSR correction) | bitmap (mask + codes)

    def __post_init__(self):
        check_params(self)


def check_params(p: PBLLMParams) -> None:
    choices = {"metric": METRICS, "variant": VARIANTS, "salient_form": FORMS}
    for key, allowed in choices.items():
        if getattr(p, key) not in allowed:
            raise LlmbinError(f"pbllm {key}={getattr(p, key)!r} is not one of {', '.join(allowed)}")
    if not 0.0 <= p.salient_ratio < 1.0:
        raise LlmbinError(f"pbllm salient_ratio must lie in [0, 1), not {p.salient_ratio}")
    if not 2 <= p.high_bits <= 8:
        raise LlmbinError(f"pbllm high_bits must be 2..8 (codes are stored in at most one byte), not {p.high_bits}")
    if p.blocksize < 1 or p.percdamp < 0 or p.arb_iters < 0:
        raise LlmbinError("pbllm blocksize must be >= 1, percdamp >= 0 and arb_iters >= 0")


class PartialBinaryQuantizer:
    """Column quantizer of the GPTQ loop: salient ? high-bit grid : binary plane, parameters fixed up front.

    With the sparse form a salient value is what the checkpoint will hold: the plane's value plus a
    float16 correction, so the loop's error feedback sees exactly the stored weights.
    """

    def __init__(self, mask, scale, offset, high_scale, high_zero, high_bits: int, sparse: bool):
        n, k = mask.shape
        self.group_size = k  # one parameter set per row, fitted before the loop
        self.mask, self.scale, self.offset = mask, scale, offset
        self.high_scale, self.high_zero, self.high_bits, self.sparse = high_scale, high_zero, high_bits, sparse
        self.bits = torch.zeros(n, k, dtype=torch.bool)
        self.codes = torch.zeros(n, k, dtype=torch.uint8)
        self.correction = torch.zeros(n, k)  # float16 values: salient value - plane value (sparse form)

    def start_group(self, col: int, w_group: torch.Tensor) -> None:
        pass

    def _quantize(self, cols, w: torch.Tensor) -> torch.Tensor:
        hs, hz = self.high_scale, self.high_zero
        if w.dim() == 2:
            hs, hz = hs[:, None], hz[:, None]
        bits, binary = binarize(w, self.scale, self.offset)
        codes = quantize_codes(w, hs, hz, self.high_bits)
        high = dequantize_codes(codes, hs, hz)
        self.bits[:, cols], self.codes[:, cols] = bits, codes.to(torch.uint8)
        if self.sparse:
            correction = (high - binary).half().float()
            self.correction[:, cols] = correction
            high = binary + correction  # the sparse format's own arithmetic
        return torch.where(self.mask[:, cols], high, binary)

    def quantize(self, col: int, w: torch.Tensor) -> torch.Tensor:
        return self._quantize(col, w)

    def quantize_all(self, w: torch.Tensor) -> torch.Tensor:
        """Plain rounding of every column at once (gptq off)."""
        return self._quantize(slice(None), w)


def _stored_bits(fmt_cls, meta: dict) -> int:
    return sum(torch.empty(0, dtype=dtype).element_size() * 8 * math.prod(shape)
               for dtype, shape in fmt_cls.expected_tensors(meta).values())


def form_sizes(n: int, k: int, nnz: int, high_bits: int) -> dict[str, int]:
    """Stored bits of one linear in each salient form, from the formats' own layouts."""
    plane = {"out_features": n, "in_features": k, "num_planes": 1, "group_size": k, "paper_bits": 0.0}
    sparse = {**plane, "k_salient": 0, "offsets": True, "in_scale": False, "out_scale": False, "perm": False,
              "sparse_nnz": nnz}
    bitmap = {**plane, "salient_bits": high_bits, "salient_nnz": nnz}
    return {"sparse": _stored_bits(BitPlaneFormat, sparse), "bitmap": _stored_bits(MaskedBinaryFormat, bitmap)}


def partial_binarize(weight: torch.Tensor, hessian: torch.Tensor | None, p: PBLLMParams):
    """-> (format, fake-quant weight == format.dequantize(), metrics) for one weight [N, K].

    hessian None: no data, so magnitude saliency and plain rounding whatever `p` says.
    """
    if hessian is not None:
        W, _, _ = prepare_hessian(weight, hessian, p.percdamp)  # dead input channels zeroed, as the loop does
    else:
        W = weight.float().clone()
    n, k = W.shape
    metric = p.metric if hessian is not None else "magnitude"
    mask = top_fraction_mask(saliency_scores(W, metric, hessian, p.percdamp), p.salient_ratio)
    nnz = int(mask.sum())
    sizes = form_sizes(n, k, nnz, p.high_bits)
    form = p.salient_form if p.salient_form != "auto" else min(sizes, key=sizes.get)
    mu, alpha = binary_mean_scale(W, ~mask, p.variant)
    if p.arb_iters:
        mu, alpha = arb_refine(W, mu, alpha, ~mask, p.arb_iters)
    scale, offset = binary_levels(mu, alpha)
    high_scale, high_zero = minmax_params(W, p.high_bits)  # the full original row, once
    quantizer = PartialBinaryQuantizer(mask, scale, offset, high_scale, high_zero, p.high_bits, form == "sparse")
    metrics = {}
    if p.gptq and hessian is not None:
        Q, metrics["loss"] = gptq_quantize(W, hessian, quantizer, p.blocksize, p.percdamp)
    else:
        Q = quantizer.quantize_all(W)
    paper_bits = ((n * k - nnz) + nnz * p.high_bits) / (n * k)
    if form == "sparse":
        fmt = BitPlaneFormat(planes=quantizer.bits[None], scales=scale.half().reshape(1, n, 1),
                             offsets=offset.half().reshape(n, 1), group_size=k, in_features=k, paper_bits=paper_bits,
                             sparse=SparseCorrection.from_dense(torch.where(mask, quantizer.correction, 0.0)))
    else:
        fmt = MaskedBinaryFormat(planes=quantizer.bits & ~mask, scales=scale.half(), offsets=offset.half(), mask=mask,
                                 salient_codes=quantizer.codes[mask], salient_scale=high_scale.half(),
                                 salient_zero=high_zero.to(torch.uint8), salient_bits=p.high_bits,
                                 paper_bits=paper_bits)
    metrics.update(salient=nnz, form=form, bits_paper=round(paper_bits, 4),
                   bits_all_in=round(fmt.all_in_bits(), 4))
    return fmt, Q, metrics


@register_method
class PBLLM(QuantMethod):
    name = "pbllm"
    summary = "PB-LLM partial binarization: top salient weights at 8 bits, the rest 1 bit, GPTQ feedback"
    params_cls = PBLLMParams

    def quantize_linear(self, name, weight, stats, generator) -> QuantResult:
        check_params(self.params)
        fmt, _, metrics = partial_binarize(weight, stats.hessian, self.params)
        return QuantResult(fmt, metrics)

    def fallback_linear(self, name, weight) -> QuantResult:
        fmt, _, metrics = partial_binarize(weight, None, self.params)  # no data: magnitude saliency, plain rounding
        return QuantResult(fmt, {**metrics, "fallback": "magnitude saliency, plain rounding"})

    def model_card_notes(self) -> str:
        p = self.params
        return (f"PB-LLM: {p.salient_ratio:.0%} of each linear's weights (by {p.metric} saliency, chosen over the "
                f"whole matrix) kept at {p.high_bits}-bit per-row min-max; the rest binarized per row "
                f"(mean/scale over {'non-salient weights' if p.variant == 'paper' else 'all columns, salient zeroed'})"
                f"{', ARB-refined' if p.arb_iters else ''}; "
                f"{'GPTQ error feedback (block ' + str(p.blocksize) + ')' if p.gptq else 'plain rounding'}. "
                f"Bits: paper convention {(1 - p.salient_ratio) + p.salient_ratio * p.high_bits:.2f}; all-in per "
                "module in `llmbin inspect` (salient part stored as a bitmap + codes or a sparse correction, "
                "whichever is smaller).")
