"""Exact greedy token from a float32 LM head while reading a quarter of its bytes.

A packed small model spends most of a decode step in its float32 head (SmolLM2: 49152 x 576,
113 MB per token, 7 of 14 ms at 1 thread). Greedy decoding needs only the argmax, so:
1. screen: approximate logits a = int8 copy of the head (per-row scale s, stored in bf16 exactly)
   times x rounded to bf16 (torch's int8 weight-only GEMV, fp32 accumulation, bf16 output): 28 MB;
2. bound: with W = q s + d, |d| <= s/2, and x = x_bf16 + r, |r| <= 2^-9 |x|, the float32 logit L_n
   (itself a K-term float32 sum, as the screen's accumulation is: each off by <= K 2^-24 sum|terms|)
      |a_n - L_n| <= s_n ||x||_1 (1/2 + 127 * 2^-9 + 2 * 127.5 K 2^-24) + |a_n| 2^-8 (bf16 output) = e_n;
3. rescore: every row whose interval [a_n - e_n, a_n + e_n] reaches the best lower bound is a
   candidate; their float32 logits are computed from the float32 head, and the first maximum wins.
The true argmax is always a candidate, so the token is the float32 head's argmax; only exact ties
within float32 rounding of one dot product (~1e-7 relative) could resolve differently from a full
F.linear. Sampling needs every logit and uses the float32 head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

OUTPUT = 2.0 ** -8  # bf16 output rounding is 2^-9 relative; twice that for safety


def rounding_factor(k: int) -> float:
    """Bound on |screen - float32 logit| in units of s_n ||x||_1: int8 rounding (1/2), x in bf16 (127 * 2^-9),
    and two float32 K-term sums (the screen's and the reference's), with 1% to spare."""
    return 1.01 * (0.5 + 127 * 2.0 ** -9 + 2 * 127.5 * k * 2.0 ** -24)


class ScreenedHead:
    def __init__(self, weight: torch.Tensor):
        w = weight.detach().float()
        # scales rounded *up* to bf16 values: the kernel reads them in bf16 exactly, and |w / s| <= 127 still holds
        scale = (w.abs().amax(1) / 127).clamp_min(1e-30)
        s16 = scale.to(torch.bfloat16)
        s16 = torch.where(s16.float() < scale, torch.nextafter(s16, torch.full_like(s16, float("inf"))), s16)
        self.weight, self.scale16, self.scale = w, s16, s16.float()
        self.q = torch.round(w / self.scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.factor = rounding_factor(w.shape[1])
        self.candidates = 0  # rows rescored so far (diagnostics)

    @staticmethod
    def available() -> bool:
        return hasattr(torch, "_weight_int8pack_mm")

    def screen(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x.to(torch.bfloat16), self.q, self.scale16).float()

    def argmax(self, x: torch.Tensor) -> int:
        """x [H] or [1, H] float32 (the final hidden state) -> index of the largest float32 logit."""
        x = x.reshape(1, -1).float()
        a = self.screen(x)[0]
        err = self.scale * (self.factor * x.abs().sum()) + a.abs() * OUTPUT
        floor = (a - err).max()
        cand = (a + err >= floor).nonzero().flatten()
        self.candidates += cand.numel()
        exact = F.linear(x, self.weight.index_select(0, cand))[0]
        return int(cand[exact.argmax()])
