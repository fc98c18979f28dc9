"""Block-wise training of PTQ1.61's scales through one decoder layer (alpha, r1, r2; the signs stay fixed).

    Loss = MSE(Y_fp, Y_q) + MSE(Y_fq, Y_q) - log|cos(Y_q, Y_fp)| - log|cos(Y_fq, Y_q)|
(cosine along hidden, averaged over tokens, per window; a batch averages its windows' losses).

The quantized layer is a copy of the layer in the compute dtype whose linears are StructuredBinaryLinear.
It never forms the weight: with x_b = x[perm[:K_bin]] * r2 and x_s = x[perm[K_bin:]],
    y = r1 * (alpha * (x_b @ S^T) + mu * sum(x_b)) + x_s @ Q^T
so the backward needs no weight-gradient matmul and no elementwise pass over [N, K]; the scales'
gradients are reductions of activation-sized tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .structured_mask import StructuredBinary


class ChannelGather:
    """x[..., perm], computed once per input tensor for the linears that share it (q/k/v, gate/up)."""

    def __init__(self, perm: torch.Tensor):
        self.perm = perm
        self.x = self.xp = None  # holding x keeps its identity unique until the next input

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x is not self.x:
            self.x, self.xp = x, x.index_select(-1, self.perm)
        return self.xp

    def clear(self) -> None:
        self.x = self.xp = None


class StructuredBinaryLinear(nn.Module):
    """Training-time stand-in for one nn.Linear: learnable alpha, r1, r2 (float32 masters), fixed signs and Q4."""

    def __init__(self, sb: StructuredBinary, bias: torch.Tensor | None, gather: ChannelGather, dtype: torch.dtype,
                 train_mu: bool = False):
        super().__init__()
        device = gather.perm.device
        self.template, self.gather, self.k_bin = sb, gather, sb.k_bin
        self.register_buffer("signs", sb.signs.to(device, dtype))
        self.register_buffer("salient", sb.salient_values().to(device, dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().to(device, dtype))
        self.alpha = nn.Parameter(sb.alpha.clone().to(device))
        self.r1 = nn.Parameter(sb.r1.clone().to(device))
        self.r2 = nn.Parameter(sb.r2.clone().to(device))
        self.mu = nn.Parameter(sb.mu.clone().to(device), requires_grad=train_mu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.signs.dtype
        xp = self.gather(x).to(dtype)
        xb = xp[..., :self.k_bin] * self.r2.to(dtype)
        y = torch.addcmul((xb @ self.signs.T) * (self.r1 * self.alpha).to(dtype),
                          xb.sum(-1, keepdim=True), (self.r1 * self.mu).to(dtype))
        if self.salient.shape[1]:
            y = y + xp[..., self.k_bin:] @ self.salient.T
        return y if self.bias is None else y + self.bias

    def export(self) -> StructuredBinary:
        cpu = lambda p: p.detach().float().cpu().clone()  # noqa: E731
        return replace(self.template, alpha=cpu(self.alpha), r1=cpu(self.r1), r2=cpu(self.r2), mu=cpu(self.mu))

    def scale_groups(self) -> tuple[list, list]:
        """(parameters at lr_alpha, parameters at lr_rowcol)."""
        return [self.alpha] + ([self.mu] if self.mu.requires_grad else []), [self.r1, self.r2]


def window_losses(y_q: torch.Tensor, y_fp: torch.Tensor, y_fq: torch.Tensor) -> torch.Tensor:
    """The block loss of each window [b] (float32)."""
    y_q, y_fp, y_fq = y_q.float(), y_fp.float(), y_fq.float()
    dims = tuple(range(1, y_q.dim()))
    mse = (y_q - y_fp).pow(2).mean(dims) + (y_q - y_fq).pow(2).mean(dims)
    cos_fp = F.cosine_similarity(y_q, y_fp, dim=-1).flatten(1).mean(1)
    cos_fq = F.cosine_similarity(y_fq, y_q, dim=-1).flatten(1).mean(1)
    return mse - cos_fp.abs().log() - cos_fq.abs().log()


@dataclass
class TrainConfig:
    epochs: int
    lr_alpha: float
    lr_rowcol: float
    batch_size: int = 1
    lr_schedule: str = "constant"  # constant | cosine (to 0 over all steps of the block)
    shuffle: bool = True


@torch.no_grad()
def evaluate_block(run, x: torch.Tensor, y_fp: torch.Tensor, y_fq: torch.Tensor, chunk: int) -> float:
    """Mean window loss of the quantized layer `run(x) -> y` over all windows, `chunk` windows per call."""
    total = 0.0
    for s in range(0, len(x), chunk):
        total += window_losses(run(x[s:s + chunk]), y_fp[s:s + chunk], y_fq[s:s + chunk]).sum().item()
    return total / len(x)


def train_block(run, x: torch.Tensor, y_fp: torch.Tensor, y_fq: torch.Tensor,
                modules: list[StructuredBinaryLinear], cfg: TrainConfig, generator: torch.Generator) -> list[float]:
    """AdamW (weight decay 0) over the windows of x [n, T, H]; -> mean training loss of each epoch."""
    slow = [p for m in modules for p in m.scale_groups()[0]]
    fast = [p for m in modules for p in m.scale_groups()[1]]
    opt = torch.optim.AdamW([{"params": slow, "lr": cfg.lr_alpha}, {"params": fast, "lr": cfg.lr_rowcol}],
                            weight_decay=0.0)
    base_lrs = [g["lr"] for g in opt.param_groups]
    n, b = len(x), max(1, cfg.batch_size)
    steps_per_epoch = -(-n // b)
    total_steps, step = cfg.epochs * steps_per_epoch, 0
    history = []
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator) if cfg.shuffle else torch.arange(n)
        epoch_loss = torch.zeros((), device=x.device)
        for s in range(0, n, b):
            idx = order[s:s + b].to(x.device)
            if cfg.lr_schedule == "cosine":
                for g, lr in zip(opt.param_groups, base_lrs):
                    g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            loss = window_losses(run(x[idx]), y_fp[idx], y_fq[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            epoch_loss += loss.detach() * len(idx)
            step += 1
        history.append(epoch_loss.item() / n)
    for m in modules:
        m.gather.clear()
    return history
