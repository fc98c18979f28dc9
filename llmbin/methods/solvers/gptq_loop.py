"""The GPTQ / OBS column loop with Hessian-guided error feedback, for any column quantizer.

H is damped (H += percdamp * mean(diag H) * I) after dead channels (diag H == 0) get H_jj = 1 and
W[:, j] = 0; U is the upper Cholesky factor of H^-1. For each block of columns, each column i is
quantized, err = (w_i - q_i) / U_ii, and the rest of the block moves by -err * U[i, i:]; after the
block, the later columns move by -Err @ U[block, end:].
"""
from __future__ import annotations

from typing import Protocol

import torch

from ...host.threads import cpu_threads
from ...errors import LlmbinError


class ColumnQuantizer(Protocol):
    group_size: int  # columns per parameter group (>= number of columns for per-row)

    def start_group(self, col: int, w_group: torch.Tensor) -> None:
        """Fit the parameters of the group starting at original column `col` on its current weights [N, G]."""

    def quantize(self, col: int, w: torch.Tensor) -> torch.Tensor:
        """Quantize original column `col` (values [N]) -> dequantized values [N]; records its codes."""


def prepare_hessian(weight: torch.Tensor, hessian: torch.Tensor, percdamp: float):
    """-> (W with dead columns zeroed, damped H, dead mask)."""
    W = weight.detach().float().clone()
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    return W, H, dead


def inverse_cholesky_upper(H: torch.Tensor) -> torch.Tensor:
    """U with U^T U = H^-1 (upper Cholesky factor of the inverse)."""
    try:
        L = torch.linalg.cholesky(H)
        return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except torch.linalg.LinAlgError:
        raise LlmbinError("the Hessian is not positive definite even after damping; raise percdamp "
                          "(--set percdamp=0.1) or use more calibration samples") from None


def single_thread():
    """The column loop runs thousands of tiny ops: thread hand-offs cost more than they save
    (15x slower with 2 threads on a busy 2-core machine)."""
    return cpu_threads(1)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, quantizer: ColumnQuantizer, blocksize: int = 128,
                  percdamp: float = 0.01, act_order: bool = False, static_groups: bool = False,
                  order: torch.Tensor | None = None):
    """-> (Q dequantized [N, K] float32 in the original column order, loss = sum (w-q)^2 / U_ii^2 / 2).

    With act_order, columns are visited by decreasing H_jj; group parameters are then fitted once on
    the original weights (static groups) because groups stay contiguous in the stored layout.
    `order` (a permutation of the columns, e.g. PTQ1.61's binarized-then-salient layout) fixes the
    visiting order explicitly; groups are then static too.
    """
    W, H, _ = prepare_hessian(weight, hessian, percdamp)
    n_cols = W.shape[1]
    g = quantizer.group_size
    if order is not None:
        if act_order or sorted(order.tolist()) != list(range(n_cols)):
            raise LlmbinError("gptq_quantize: order must be a permutation of the columns and excludes act_order")
        static_groups, order = True, order.long()
    elif act_order:
        static_groups = True
        order = torch.argsort(torch.diag(H), descending=True)
    else:
        order = torch.arange(n_cols)
    if static_groups:
        for start in range(0, n_cols, g):
            quantizer.start_group(start, W[:, start:start + g])
    W, H = W[:, order], H[order][:, order]
    U = inverse_cholesky_upper(H)
    with single_thread():
        Q, loss = _column_loop(W, U, quantizer, order, blocksize, static_groups)
    inverse = torch.argsort(order)
    return Q[:, inverse], float(loss)


def _column_loop(W, U, quantizer, order, blocksize, static_groups):
    n_cols = W.shape[1]
    g = quantizer.group_size
    Q = torch.zeros_like(W)
    loss = torch.zeros((), dtype=torch.float64)
    for b0 in range(0, n_cols, blocksize):
        b1 = min(b0 + blocksize, n_cols)
        W1 = W[:, b0:b1].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = int(order[b0 + i])
            if not static_groups and col % g == 0:
                # the group's current weights: inside the block from W1; past it, W plus the pending
                # feedback of this block's columns so far (what a column-by-column update would hold)
                width = min(g, n_cols - col)
                in_block = min(width, b1 - b0 - i)
                beyond = W[:, b1:b1 + width - in_block] - Err1[:, :i] @ U[b0:b0 + i, b1:b1 + width - in_block]
                quantizer.start_group(col, torch.cat([W1[:, i:i + in_block], beyond], 1))
            w = W1[:, i]
            q = quantizer.quantize(col, w)
            d = U1[i, i]
            Q[:, b0 + i] = q
            loss += ((w - q) ** 2).sum(dtype=torch.float64) / d.double() ** 2 / 2
            err = (w - q) / d
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1)
            Err1[:, i] = err
        W[:, b1:].addmm_(Err1, U[b0:b1, b1:], alpha=-1)
    return Q, loss


def hessian_diag_of_inverse_cholesky(hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    """d_j = U_jj, the saliency denominator the reference codes use (after the same damping)."""
    _, H, _ = prepare_hessian(torch.zeros(1, hessian.shape[0]), hessian, percdamp)
    return torch.diag(inverse_cholesky_upper(H))
