"""Block-wise training of PTQ1.61's scales through one decoder layer (alpha, r1, r2; the signs stay fixed).

    Loss = MSE(Y_fp, Y_q) + MSE(Y_fq, Y_q) - log|cos(Y_q, Y_fp)| - log|cos(Y_fq, Y_q)|
(cosine along hidden, averaged over tokens, per window; a batch averages its windows' losses).

The quantized layer is a float32 copy of the layer whose linears are StructuredBinaryLinear. It never
forms the weight: with x_b = x[perm[:K_bin]] * r2 and x_s = x[perm[K_bin:]],
    y = r1 * (alpha * (x_b @ S^T) + mu * sum(x_b)) + x_s @ Q^T
so the backward needs no weight-gradient matmul and no elementwise pass over [N, K]; the scales'
gradients are reductions of activation-sized tensors. The targets stay fixed for the whole block.
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

    def __init__(self, perm: torch.Tensor, matmul_dtype: torch.dtype):
        self.perm, self.matmul_dtype = perm, matmul_dtype
        self.x = self.xp = None  # holding x keeps its identity unique until the next input

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x is not self.x:
            self.x, self.xp = x, x.index_select(-1, self.perm)
        return self.xp

    def clear(self) -> None:
        self.x = self.xp = None


class StructuredBinaryLinear(nn.Module):
    """Training-time stand-in for one nn.Linear: learnable alpha, r1, r2 (float32), fixed signs and 4-bit codes.

    Float32 in and out, so the layer around it (norms, residual stream, attention) keeps float32; only the
    two matmuls run in the matmul dtype (bf16 where the device has fast bf16), on constants that bf16
    holds exactly: the signs (plus a row of ones giving sum(x_b)) and the integer levels q - zero.
    The scales multiply in float32 (r2 before the cast: bf16 could not resolve r2's small steps near 1).
    """

    def __init__(self, sb: StructuredBinary, bias: torch.Tensor | None, gather: ChannelGather, train_mu: bool = False):
        super().__init__()
        device, mdt = gather.perm.device, gather.matmul_dtype
        self.template, self.gather, self.k_bin, self.n = sb, gather, sb.k_bin, sb.signs.shape[0]
        self.register_buffer("signs", torch.cat([sb.signs, torch.ones(1, sb.k_bin)]).to(device, mdt))
        self.register_buffer("levels", (sb.salient_codes.float() - sb.salient_zero[:, None]).to(device, mdt))
        self.register_buffer("salient_scale", sb.salient_scale.to(device))
        self.register_buffer("bias", None if bias is None else bias.detach().float().to(device))
        self.alpha = nn.Parameter(sb.alpha.clone().to(device))
        self.r1 = nn.Parameter(sb.r1.clone().to(device))
        self.r2 = nn.Parameter(sb.r2.clone().to(device))
        self.mu = nn.Parameter(sb.mu.clone().to(device), requires_grad=train_mu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # split, not slicing: a slice's backward zero-fills the whole tensor, split's is one cat
        xb, xs = self.gather(x.float()).split([self.k_bin, self.levels.shape[1]], dim=-1)
        mdt = self.signs.dtype
        u, s = ((xb * self.r2).to(mdt) @ self.signs.T).float().split([self.n, 1], dim=-1)
        y = torch.addcmul(s * (self.r1 * self.mu), u, self.r1 * self.alpha)
        if self.levels.shape[1]:
            y = torch.addcmul(y, (xs.to(mdt) @ self.levels.T).float(), self.salient_scale)
        return y if self.bias is None else y + self.bias

    def export(self) -> StructuredBinary:
        cpu = lambda p: p.detach().float().cpu().clone()  # noqa: E731
        return replace(self.template, alpha=cpu(self.alpha), r1=cpu(self.r1), r2=cpu(self.r2), mu=cpu(self.mu))

    def scale_groups(self) -> tuple[list, list]:
        """(parameters at lr_alpha, parameters at lr_rowcol)."""
        return [self.alpha] + ([self.mu] if self.mu.requires_grad else []), [self.r1, self.r2]


def window_losses(y_q: torch.Tensor, y_fp: torch.Tensor, y_fq: torch.Tensor, relative: bool = False) -> torch.Tensor:
    """The block loss of each window [b] (float32), written plainly: the definition FusedBlockLoss must match.

    relative: each token's squared error is divided by its target's |y_t|^2 / H, so tokens whose hidden state is
    100x larger than the others (attention sinks) weigh like any other token instead of owning the MSE terms.
    """
    y_q, y_fp, y_fq = y_q.float(), y_fp.float(), y_fq.float()
    mse = 0
    for target in (y_fp, y_fq):
        err = (y_q - target).pow(2).mean(-1)
        mse = mse + (err / target.pow(2).mean(-1).clamp_min(1e-12) if relative else err).flatten(1).mean(1)
    cos_fp = F.cosine_similarity(y_q, y_fp, dim=-1).flatten(1).mean(1)
    cos_fq = F.cosine_similarity(y_fq, y_q, dim=-1).flatten(1).mean(1)
    return mse - cos_fp.abs().log() - cos_fq.abs().log()


def token_sq_norms(y: torch.Tensor) -> torch.Tensor:
    """|y_t|^2 per token [b, T] in float64 (the fused loss's precomputed target norms)."""
    return (y.float() * y.float()).sum(-1, dtype=torch.float64)


class FusedBlockLoss(torch.autograd.Function):
    """window_losses [b] for y_q [b, T, H] from three per-token dot products (the targets' norms precomputed),
    with a hand-written backward: dL/dy_q = a_t y_q + b_t y_fp + c_t y_fq (3 passes where autograd takes ~30)."""

    @staticmethod
    def forward(ctx, y_q, y_fp, y_fq, fp_sq, fq_sq, relative=False):
        q = y_q.float()
        dot = lambda a, b: (a * b).sum(-1, dtype=torch.float64)  # noqa: E731
        qq, qf, qs = dot(q, q), dot(q, y_fp), dot(q, y_fq)
        n_q, n_f, n_s = (v.sqrt().clamp_min(1e-8) for v in (qq, fp_sq, fq_sq))
        cos_f, cos_s = qf / (n_q * n_f), qs / (n_q * n_s)
        c_f, c_s = cos_f.mean(1, keepdim=True), cos_s.mean(1, keepdim=True)
        t, h = q.shape[1], q.shape[2]
        # weight of each token's squared error: 1/(T H) plain, 1/(T |y_t|^2) relative
        w_f = 1 / (t * fp_sq.clamp_min(1e-12)) if relative else torch.full_like(qq, 1 / (t * h))
        w_s = 1 / (t * fq_sq.clamp_min(1e-12)) if relative else w_f
        mse = (w_f * (qq - 2 * qf + fp_sq) + w_s * (qq - 2 * qs + fq_sq)).sum(1)
        ctx.save_for_backward(q, y_fp, y_fq, n_q, n_f, n_s, cos_f, cos_s, c_f, c_s, w_f, w_s)
        ctx.in_dtype = y_q.dtype
        return (mse - c_f.squeeze(1).abs().log() - c_s.squeeze(1).abs().log()).float()

    @staticmethod
    def backward(ctx, grad):
        q, y_fp, y_fq, n_q, n_f, n_s, cos_f, cos_s, c_f, c_s, w_f, w_s = ctx.saved_tensors
        t = q.shape[1]
        g = grad.double()[:, None]
        a = g * (2 * w_f + 2 * w_s + (cos_f / c_f + cos_s / c_s) / (t * n_q * n_q))
        b = g * (-2 * w_f - 1 / (t * c_f * n_q * n_f))
        c = g * (-2 * w_s - 1 / (t * c_s * n_q * n_s))
        f32 = lambda v: v.float()[..., None]  # noqa: E731
        dq = torch.addcmul(torch.addcmul(f32(a) * q, f32(b), y_fp), f32(c), y_fq)
        return dq.to(ctx.in_dtype), None, None, None, None, None


@dataclass
class TrainConfig:
    epochs: int
    lr_alpha: float
    lr_rowcol: float
    batch_size: int = 1
    lr_schedule: str = "constant"  # constant | cosine (to 0 over all steps of the block)
    shuffle: bool = True
    relative_mse: bool = False  # see window_losses


@torch.no_grad()
def evaluate_block(run, x: torch.Tensor, y_fp: torch.Tensor, y_fq: torch.Tensor, chunk: int,
                   relative: bool = False) -> float:
    """Mean window loss of the quantized layer `run(x) -> y` over the windows of x, `chunk` windows per call."""
    total = 0.0
    for s in range(0, len(x), chunk):
        total += window_losses(run(x[s:s + chunk]), y_fp[s:s + chunk], y_fq[s:s + chunk], relative).sum().item()
    return total / len(x)


def train_block(run, x: torch.Tensor, y_fp: torch.Tensor, y_fq: torch.Tensor,
                modules: list[StructuredBinaryLinear], cfg: TrainConfig, generator: torch.Generator) -> list[float]:
    """AdamW (weight decay 0) over the windows of x [n, T, H]; -> mean training loss of each epoch."""
    slow = [p for m in modules for p in m.scale_groups()[0]]
    fast = [p for m in modules for p in m.scale_groups()[1]]
    opt = torch.optim.AdamW([{"params": slow, "lr": cfg.lr_alpha}, {"params": fast, "lr": cfg.lr_rowcol}],
                            weight_decay=0.0)
    base_lrs = [g["lr"] for g in opt.param_groups]
    fp_sq, fq_sq = token_sq_norms(y_fp), token_sq_norms(y_fq)
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
            loss = FusedBlockLoss.apply(run(x[idx]), y_fp[idx], y_fq[idx], fp_sq[idx], fq_sq[idx],
                                        cfg.relative_mse).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            epoch_loss += loss.detach() * len(idx)
            step += 1
        history.append(epoch_loss.item() / n)
    for m in modules:
        m.gather.clear()
    return history
