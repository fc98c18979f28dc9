"""Element-wise weight saliency and exact-count top-fraction masks (PB-LLM, BiLLM-style metrics).

hessian:   S = W^2 / d_j^2 with d_j = U_jj, U the upper Cholesky factor of the damped H^-1 (what the
           reference codes use; it is the OBS cost of zeroing w under the GPTQ column order)
magnitude: S = |W|
"""
from __future__ import annotations

import torch

from ...errors import LlmbinError
from .gptq_loop import prepare_hessian

METRICS = ("hessian", "magnitude")


def inverse_cholesky_diag(hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    """d_j = U_jj with U^T U = H^-1 (U upper), after gptq_loop's damping: the same numbers as
    `hessian_diag_of_inverse_cholesky`, from ONE Cholesky factorisation.

    With J the reversal permutation and J H J = L L^T, U = J L^-1 J is upper triangular with a positive
    diagonal and U^T U = J L^-T L^-1 J = H^-1, so U_jj = 1 / L_{K-1-j, K-1-j}. This avoids the
    cholesky_inverse + second factorisation, which cost ~1 s per 576-wide Hessian when the 2 cores are
    shared (against ~50 ms for this).
    """
    _, H, _ = prepare_hessian(torch.zeros(1, hessian.shape[0]), hessian, percdamp)
    L, info = torch.linalg.cholesky_ex(H.flip(0, 1))
    if info.item():
        raise LlmbinError("the Hessian is not positive definite even after damping; raise percdamp "
                          "(--set percdamp=0.1) or use more calibration samples")
    return 1.0 / L.diagonal().flip(0)


def saliency_scores(weight: torch.Tensor, metric: str, hessian: torch.Tensor | None = None,
                    percdamp: float = 0.01) -> torch.Tensor:
    """Per-weight saliency [N, K] (float32) of `weight` by `metric`."""
    w = weight.float()
    if metric == "magnitude":
        return w.abs()
    if metric == "hessian":
        if hessian is None:
            raise LlmbinError("metric=hessian needs the layer's input Hessian; use metric=magnitude without data")
        d = inverse_cholesky_diag(hessian, percdamp)
        return w.pow(2) / d.pow(2)[None, :]
    raise LlmbinError(f"unknown saliency metric {metric!r}; choose one of {', '.join(METRICS)}")


def top_fraction_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Bool mask of exactly round(ratio * numel) entries with the highest scores over the whole matrix.

    Global (one threshold for the matrix, not per row). Ties are broken deterministically by a stable
    descending sort: among equal scores the lower row-major index wins.
    """
    if not 0.0 <= ratio <= 1.0:
        raise LlmbinError(f"salient ratio must lie in [0, 1], not {ratio}")
    count = int(round(ratio * scores.numel()))
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    if count:
        order = torch.sort(scores.flatten(), descending=True, stable=True).indices
        mask[order[:count]] = True
    return mask.view(scores.shape)
