"""PTQ1.61's structured representation of one weight: a salient-channel mask, 4-bit salient columns,
one scaled binary plane on the others.

One bit per INPUT channel: the top ceil(ratio * K) channels by an activation statistic are salient.
    salient columns:    Q4(W), per-row asymmetric min-max round-to-nearest, range over the ENTIRE row
    binarized columns:  W' = r1 r2^T * (alpha * sign(W - mu) + mu), mu and the initial alpha per row over
                        the binarized entries only; r1 [N], r2 [K_bin] start at 1.
Columns are kept in `perm` order (binarized ascending, then salient ascending): the packed layout's order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ...formats.bitplane import BitPlaneFormat, mask_order
from .quant_grid import dequantize_codes, minmax_params, quantize_codes

SALIENT_BITS = 4


def salient_count(in_features: int, ratio: float) -> int:
    return min(in_features, math.ceil(round(ratio * in_features, 9)))  # round: 0.1 * 30 must give 3, not 4


def salient_channel_mask(act: torch.Tensor, ratio: float | None, count: int | None = None) -> torch.Tensor:
    """bool [K]: the ceil(ratio * K) (or `count`) channels with the largest statistic (ties: lower index first)."""
    mask = torch.zeros(act.numel(), dtype=torch.bool)
    order = torch.sort(act.float().cpu(), descending=True, stable=True).indices
    mask[order[:salient_count(act.numel(), ratio) if count is None else count]] = True
    return mask


def fp16(t: torch.Tensor) -> torch.Tensor:
    return t.half().float()


@dataclass
class StructuredBinary:
    """One linear's PTQ1.61 parameters; float32 [N, ...] tensors on the host."""

    perm: torch.Tensor  # int64 [K]
    signs: torch.Tensor  # +-1 [N, K_bin] in perm order, fixed
    mu: torch.Tensor  # [N]
    alpha: torch.Tensor  # [N]
    r1: torch.Tensor  # [N]
    r2: torch.Tensor  # [K_bin]
    salient_codes: torch.Tensor  # uint8 [N, K_sal] in perm order
    salient_scale: torch.Tensor  # [N], float16-exact
    salient_zero: torch.Tensor  # [N], integer-valued

    @property
    def k_bin(self) -> int:
        return self.signs.shape[1]

    @property
    def k_salient(self) -> int:
        return self.salient_codes.shape[1]

    @classmethod
    def init(cls, weight: torch.Tensor, mask: torch.Tensor, alpha_init: str = "mean_abs",
             salient_grid: str = "row") -> "StructuredBinary":
        """alpha_init: mean_abs = mean |w| (reference code); lsq = mean |w - mu| (least squares for fixed signs).
        salient_grid: row = the 4-bit range of the entire row (reference code); salient = of the salient
        columns only (the values it actually has to represent: a finer grid)."""
        w = weight.float().cpu()
        perm = mask_order(mask)
        k_bin = int((~mask).sum())
        wb, ws = w[:, perm[:k_bin]], w[:, perm[k_bin:]]
        mu = wb.mean(1)
        signs = torch.where(wb >= mu[:, None], 1.0, -1.0)
        alpha = (wb - mu[:, None] if alpha_init == "lsq" else wb).abs().mean(1)
        scale, zero = minmax_params(ws if salient_grid == "salient" and ws.shape[1] else w, SALIENT_BITS)
        codes = quantize_codes(ws, scale[:, None], zero[:, None], SALIENT_BITS).to(torch.uint8)
        return cls(perm, signs, mu, alpha, torch.ones(w.shape[0]), torch.ones(k_bin), codes, scale, zero)

    def salient_values(self) -> torch.Tensor:
        """Dequantized 4-bit block [N, K_sal] (exact in float16)."""
        return dequantize_codes(self.salient_codes.float(), self.salient_scale[:, None], self.salient_zero[:, None])

    def rounded(self) -> "StructuredBinary":
        """What the packed format stores (A = 2 alpha r1, C = (mu - alpha) r1, r2 through float16), re-expressed."""
        a, c = self._packed_row_scales()
        return replace(self, alpha=a / 2, mu=c + a / 2, r1=torch.ones_like(self.r1), r2=fp16(self.r2))

    def _packed_row_scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """r1 scales only the binary part, so it folds into that part's per-row A and C: no stored out_scale."""
        return fp16(2 * self.alpha * self.r1), fp16((self.mu - self.alpha) * self.r1)

    def dequantize(self) -> torch.Tensor:
        """Dense [N, K] with these (unrounded) parameters."""
        n, k = self.signs.shape[0], self.perm.numel()
        w = torch.zeros(n, k)
        binary = (self.alpha[:, None] * self.signs + self.mu[:, None]) * self.r1[:, None] * self.r2[None, :]
        w[:, self.perm[:self.k_bin]] = binary
        w[:, self.perm[self.k_bin:]] = self.salient_values()
        return w

    def paper_bits(self) -> float:
        return (self.k_bin + SALIENT_BITS * self.k_salient) / self.perm.numel()

    def to_format(self) -> BitPlaneFormat:
        """One plane, one group per row: A = 2 alpha r1, C = (mu - alpha) r1; in_scale = r2 (1 on salient)."""
        in_scale = torch.ones(self.perm.numel())
        in_scale[self.perm[:self.k_bin]] = self.r2
        salient = self.k_salient > 0
        a, c = self._packed_row_scales()
        return BitPlaneFormat(
            planes=(self.signs > 0)[None], scales=a.half()[None, :, None], offsets=c.half()[:, None],
            group_size=max(self.k_bin, 1), in_features=self.perm.numel(), paper_bits=self.paper_bits(),
            in_scale=in_scale.half(), perm=self.perm.to(torch.int32) if salient else None,  # none salient: identity
            salient_codes=self.salient_codes if salient else None,
            salient_scale=self.salient_scale.half() if salient else None,
            salient_zero=self.salient_zero.half() if salient else None)
