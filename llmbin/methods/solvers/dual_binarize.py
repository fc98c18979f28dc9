"""Flexible dual binarization (DB-LLM's FDB): w_hat = a1*b1 + a2*b2 with b1, b2 in {0,1}, per row and group.

Init from a symmetric 2-bit step s = max|w|/2 per (row, group): a1 = 2s, a2 = -s, so the levels
{a2, 0, a1 + a2, a1} are {-s, 0, s, 2s}. Assignment is to the nearest of the four levels (equal to
the midpoint thresholds b1 = H(w - (a1+a2)/2), b2 = H(-(w - a1*b1 - a2/2)) whenever a2 < 0 < a1+a2 < a1,
and still nearest after a refit breaks that order). A refit solves the 2x2 (optionally diag(H)-
weighted) least-squares problem for (a1, a2) given the planes, rounds through float16, re-assigns,
and is kept for a row only if it does not raise that row's (weighted) squared error; a few rounds.
Levels are always computed as a1*b1 + a2*b2 in float32 from float16-representable scales, exactly
as BitPlaneFormat.dequantize does, so fake-quant weights equal the packed ones bit for bit.
"""
from __future__ import annotations

import torch

from ...formats import BitPlaneFormat


def fp16(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def init_scales(w: torch.Tensor, negative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, G] -> (a1, a2) [N] float16-representable: a1 = 2s, a2 = -s, s = max|w| / 2.

    `negative` gives the mirrored grid a1 = -2s, a2 = s (levels {-2s, -s, 0, s}): the lone 2s level
    on the negative side.
    """
    s = fp16(w.abs().amax(dim=1) / 2)
    a1, a2 = 2 * s, -s  # exact in float16 too (a power-of-two multiple)
    return (-a1, -a2) if negative else (a1, a2)


def levels_of(b1: torch.Tensor, b2: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """a1*b1 + a2*b2 in float32 (the dequantizer's arithmetic); a1/a2 [N] broadcast over the later dims."""
    shape = (-1,) + (1,) * (b1.dim() - 1)
    return a1.view(shape) * b1.float() + a2.view(shape) * b2.float()


def sorted_levels(a1: torch.Tensor, a2: torch.Tensor):
    """-> (the 4 levels ascending [N, 4], their codes 2*b1 + b2 [N, 4], the 3 midpoints between them [N, 3])."""
    codes = torch.arange(4).expand(len(a1), 4)
    levels, order = levels_of(codes >= 2, (codes & 1).bool(), a1, a2).sort(dim=1, stable=True)
    return levels, codes.gather(1, order), (levels[:, 1:] + levels[:, :-1]) / 2


def assign_codes(w: torch.Tensor, levels, codes, midpoints) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest level by midpoint thresholds (ties to the lower level): w [N, G] -> (codes, values) [N, G]."""
    idx = (w.unsqueeze(-1) > midpoints.unsqueeze(1)).sum(-1)
    return codes.gather(1, idx), levels.gather(1, idx)


def assign(w: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-level planes for w [N, G] -> (b1, b2) bool [N, G]."""
    code, _ = assign_codes(w, *sorted_levels(a1, a2))
    return code >= 2, (code & 1).bool()


def _sq_error(residual: torch.Tensor, col_weights=None) -> torch.Tensor:
    err = residual.double() ** 2
    return (err if col_weights is None else err * col_weights.double()).sum(dim=1)


def group_error(w, a1, a2, col_weights=None) -> torch.Tensor:
    """Per-row (weighted) squared error of the nearest-level assignment: [N] float64."""
    _, values = assign_codes(w, *sorted_levels(a1, a2))
    return _sq_error(w - values, col_weights)


def refit_scales(w, b1, b2, a1, a2, col_weights=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (a1, a2) per row for fixed planes, float16-rounded; rows with a singular system keep theirs."""
    h = torch.ones(w.shape[1], dtype=torch.float64) if col_weights is None else col_weights.double()
    x1, x2, wd = b1.double(), b2.double(), w.double()
    s11, s22, s12 = (x1 * h).sum(1), (x2 * h).sum(1), (x1 * x2 * h).sum(1)
    t1, t2 = (wd * x1 * h).sum(1), (wd * x2 * h).sum(1)
    det = s11 * s22 - s12 ** 2
    ok = det > 1e-9 * (s11 * s22).clamp(min=1e-30)
    safe = torch.where(ok, det, torch.ones_like(det))
    new1 = torch.where(ok, (s22 * t1 - s12 * t2) / safe, a1.double())
    new2 = torch.where(ok, (s11 * t2 - s12 * t1) / safe, a2.double())
    return fp16(new1.float()), fp16(new2.float())


def fit_dual(w: torch.Tensor, refit_iters: int = 3, col_weights: torch.Tensor | None = None, mirror: bool = False):
    """w [N, G] -> (a1, a2) [N]: init, then up to `refit_iters` guarded refit + re-assign rounds.

    With `mirror` (llmbin's mirror_init, not in the spec) the whole fit runs from both grid orientations
    (2s level on the positive or on the negative side) and each row keeps the one with the smaller final
    (weighted) error, so it can never be worse than the positive-only fit; ties keep the positive one.
    """
    w = w.float()
    a1, a2, err = _fit_from(w, *init_scales(w), refit_iters, col_weights)
    if mirror:
        m1, m2, merr = _fit_from(w, *init_scales(w, negative=True), refit_iters, col_weights)
        flip = merr < err
        a1, a2 = torch.where(flip, m1, a1), torch.where(flip, m2, a2)
    return a1, a2


def _fit_from(w, a1, a2, refit_iters, col_weights):
    """Guarded refit rounds from the given start -> (a1, a2, per-row error)."""
    code, values = assign_codes(w, *sorted_levels(a1, a2))
    err = _sq_error(w - values, col_weights)
    for _ in range(refit_iters):
        n1, n2 = refit_scales(w, code >= 2, (code & 1).bool(), a1, a2, col_weights)
        new_code, new_values = assign_codes(w, *sorted_levels(n1, n2))
        new_err = _sq_error(w - new_values, col_weights)
        better = new_err <= err  # never raise a row's error (float16 rounding could)
        if not bool((better & ((n1 != a1) | (n2 != a2))).any()):
            break
        a1, a2 = torch.where(better, n1, a1), torch.where(better, n2, a2)
        code, err = torch.where(better[:, None], new_code, code), torch.where(better, new_err, err)
    return a1, a2, err


class DualBinaryColumnQuantizer:
    """ColumnQuantizer for gptq_quantize: scales fitted per group at its first column, codes per column."""

    def __init__(self, out_features: int, in_features: int, group_size: int = 64, refit_iters: int = 3,
                 col_weights: torch.Tensor | None = None, mirror_init: bool = False):
        self.group_size = in_features if group_size <= 0 else group_size
        self.in_features, self.refit_iters, self.col_weights = in_features, refit_iters, col_weights
        self.mirror_init = mirror_init
        ng = -(-in_features // self.group_size)
        self.codes = torch.zeros(out_features, in_features, dtype=torch.uint8)  # 2*b1 + b2
        self.scales = torch.zeros(2, out_features, ng)
        self.tables: dict[int, tuple] = {}  # group -> sorted_levels(a1, a2), the per-column lookup

    def start_group(self, col: int, w_group: torch.Tensor) -> None:
        g = col // self.group_size
        cw = None if self.col_weights is None else self.col_weights[col:col + w_group.shape[1]]
        a1, a2 = fit_dual(w_group, self.refit_iters, cw, self.mirror_init)
        self.scales[0, :, g], self.scales[1, :, g] = a1, a2
        self.tables[g] = sorted_levels(a1, a2)

    def quantize(self, col: int, w: torch.Tensor) -> torch.Tensor:
        code, value = assign_codes(w.unsqueeze(1), *self.tables[col // self.group_size])
        self.codes[:, col] = code[:, 0]
        return value[:, 0]

    def quantize_all(self, weight: torch.Tensor) -> torch.Tensor:
        """Without error feedback (data-free fallback): fit and assign each group -> dequantized weight."""
        out = torch.empty(weight.shape)
        for start in range(0, self.in_features, self.group_size):
            block = weight[:, start:start + self.group_size].float()
            self.start_group(start, block)
            code, value = assign_codes(block, *self.tables[start // self.group_size])
            self.codes[:, start:start + block.shape[1]], out[:, start:start + block.shape[1]] = code, value
        return out

    def to_format(self, paper_bits: float = 2.0) -> BitPlaneFormat:
        planes = torch.stack([self.codes >= 2, (self.codes & 1).bool()])
        return BitPlaneFormat(planes=planes, scales=self.scales.half(), offsets=None, group_size=self.group_size,
                              in_features=self.in_features, paper_bits=paper_bits)
