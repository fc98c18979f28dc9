"""Deviation-aware distillation of bit-plane group scales against a full-precision teacher (DB-LLM's DAD).

Only the per-group scales A of each quantized linear's BitPlaneFormat train; the planes, offsets
and every other weight of the model stay frozen. A scale is trained as A = A0 * m with m = 1 at the
start, so one Adam learning rate means the same relative step for every layer's scales.

Loss (the paper's exact weighting is not public; this is llmbin's choice), per token t with
teacher logits z_t, student logits u_t, temperature T and vocabulary size V:

    p_t = softmax(z_t / T),  q_t = softmax(u_t / T)
    KL_t = sum_v p_t,v (log p_t,v - log q_t,v)          H_t = -sum_v p_t,v log p_t,v
    w_t  = 1 + gamma * H_t / log V                       (in [1, 1 + gamma]; gamma = entropy_weight)
    L    = T^2 * mean_t (w_t * KL_t)

so tokens on which the teacher itself is uncertain (ambiguous continuations, where a quantized
student deviates most) count up to (1 + gamma) times as much as confident ones, with a weight that
does not depend on the batch. The loss on held-out windows is measured before and after training;
if training did not lower it, the original scales are restored.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...errors import LlmbinError
from ...models.walk import set_submodule


@dataclass
class DistillParams:
    enabled: bool = False
    epochs: int = 1
    lr: float = 5e-3  # Adam step on the relative scale factors m (A = A0 * m)
    data: str = "calibration"  # calibration (the recipe's windows) | selfgen (sampled from the FP teacher)
    nsamples: int = 32  # training windows
    seqlen: int = 256  # tokens per window (calibration windows are cut to this length)
    eval_nsamples: int = 8  # held-out windows for the before/after loss (after the training windows)
    batch_size: int = 2
    temperature: float = 1.0
    entropy_weight: float = 1.0  # gamma in w_t = 1 + gamma * H_t / log V

    def __post_init__(self):
        if self.data not in ("calibration", "selfgen"):
            raise LlmbinError(f"distill.data must be calibration or selfgen, not {self.data!r}")


def planes_weight(scales: torch.Tensor, planes: torch.Tensor, group_size: int) -> torch.Tensor:
    """sum_p A[p, n, k // G] * B[p, n, k] in A's dtype (float32: the arithmetic of BitPlaneFormat.binary_part)."""
    expanded = scales.repeat_interleave(group_size, dim=-1)[..., : planes.shape[-1]]
    return (expanded * planes.to(scales.dtype)).sum(0)


class _PlaneLinearFn(torch.autograd.Function):
    """y = x W(A)^T, saving only x, the bool planes and A (W is rebuilt in backward, not stored)."""

    @staticmethod
    def forward(ctx, x, scales, planes, offset_weight, group_size):
        ctx.save_for_backward(x, scales, planes, offset_weight)
        ctx.group_size = group_size
        return F.linear(x, (planes_weight(scales, planes, group_size) + offset_weight).to(x.dtype))

    @staticmethod
    def backward(ctx, grad_y):
        x, scales, planes, offset_weight = ctx.saved_tensors
        g = ctx.group_size
        weight = (planes_weight(scales, planes, g) + offset_weight).to(grad_y.dtype)
        grad_x = grad_y @ weight
        grad_w = (grad_y.flatten(0, -2).T @ x.flatten(0, -2)).to(scales.dtype)  # [N, K]
        pad = scales.shape[-1] * g - planes.shape[-1]
        per_weight = F.pad(planes.to(scales.dtype) * grad_w, (0, pad))
        grad_scales = per_weight.unflatten(-1, (scales.shape[-1], g)).sum(-1)
        return grad_x, grad_scales, None, None, None


class ScaleTrainableLinear(nn.Module):
    """Stand-in for a plain (no perm / in- / out-scale / salient part) BitPlaneFormat linear while its scales train."""

    def __init__(self, fmt, bias: torch.Tensor | None, device):
        super().__init__()
        self.group_size = fmt.group_size
        self.register_buffer("base", fmt.scales.float().to(device))
        self.register_buffer("planes", fmt.planes.to(device))
        offsets = torch.zeros(()) if fmt.offsets is None else \
            fmt.offsets.float().repeat_interleave(fmt.group_size, -1)[:, : fmt.k_bin]
        self.register_buffer("offset_weight", offsets.to(device))
        self.factor = nn.Parameter(torch.ones_like(self.base))
        self.bias = bias

    def scales(self) -> torch.Tensor:
        return self.base * self.factor

    def forward(self, x):
        y = _PlaneLinearFn.apply(x, self.scales(), self.planes, self.offset_weight, self.group_size)
        return y if self.bias is None else y + self.bias


def entropy_weighted_kl(student_logits, teacher_logits, temperature: float = 1.0, gamma: float = 1.0):
    """L = T^2 mean_t (1 + gamma H_t / log V) KL(p_t || q_t); see the module docstring."""
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    p = log_p.exp()
    kl = (p * (log_p - log_q)).sum(-1)
    entropy = -(p * log_p).sum(-1)
    weight = 1 + gamma * entropy / math.log(teacher_logits.shape[-1])
    return temperature ** 2 * (weight.detach() * kl).mean()


def _plain_bitplane(fmt) -> bool:
    return (fmt.name == "bitplane" and fmt.perm is None and fmt.in_scale is None and fmt.out_scale is None
            and fmt.k_salient == 0 and fmt.sparse is None)


def logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


@torch.no_grad()
def distill_loss(student, teacher, windows, params: DistillParams, device) -> float:
    total = 0.0
    for start in range(0, len(windows), params.batch_size):
        ids = windows[start:start + params.batch_size].to(device)
        loss = entropy_weighted_kl(logits(student, ids), logits(teacher, ids), params.temperature, params.entropy_weight)
        total += float(loss) * len(ids)
    return total / len(windows)


def distill_scales(student, teacher, train_windows, eval_windows, results: dict, params: DistillParams,
                   generator: torch.Generator, log=None, device="cpu") -> dict:
    """Train the group scales of every plain bit-plane linear in `results` (qualified name -> QuantResult).

    Afterwards each QuantResult's format carries the float16-rounded trained scales and each linear's
    weight is that format's dequantized value (fake-quant == packed). -> {loss_before, loss_after, seconds, ...}.
    """
    start_time = time.perf_counter()
    device = torch.device(device)
    names = [n for n, r in results.items() if _plain_bitplane(r.format)]
    if not names:
        raise LlmbinError("distillation found no plain bit-plane linears whose scales it could train")
    original = {n: results[n].format for n in names}
    student.to(device).eval()
    teacher.to(device).eval()
    frozen = [(p, p.requires_grad) for p in list(student.parameters()) + list(teacher.parameters())]
    for p, _ in frozen:
        p.requires_grad_(False)
    loss_before = distill_loss(student, teacher, eval_windows, params, device)

    linears = {n: student.get_submodule(n) for n in names}
    trainable = {n: ScaleTrainableLinear(original[n], linears[n].bias, device) for n in names}
    for n in names:
        set_submodule(student, n, trainable[n])
    opt = torch.optim.Adam([m.factor for m in trainable.values()], lr=params.lr)
    steps, epoch_losses = 0, []
    bar = tqdm(total=params.epochs * -(-len(train_windows) // params.batch_size), desc="distilling scales", unit="step",
               disable=log is None or not log.verbose)
    try:
        for epoch in range(params.epochs):
            order = torch.randperm(len(train_windows), generator=generator)
            running = 0.0
            for b in range(0, len(order), params.batch_size):
                ids = train_windows[order[b:b + params.batch_size]].to(device)
                with torch.no_grad():
                    teacher_logits = logits(teacher, ids)
                loss = entropy_weighted_kl(logits(student, ids), teacher_logits,
                                           params.temperature, params.entropy_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += loss.item() * len(ids)
                steps += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.4f}")
            epoch_losses.append(running / len(order))
            if log is not None:
                log.note(f"distill epoch {epoch + 1}/{params.epochs}: train loss {epoch_losses[-1]:.4f} "
                         f"({time.perf_counter() - start_time:.0f} s)")
        trained = {n: dataclasses.replace(original[n], scales=trainable[n].scales().detach().cpu().half())
                   for n in names}
    finally:
        bar.close()
        for n in names:
            set_submodule(student, n, linears[n])

    def install(formats):
        for n, fmt in formats.items():
            results[n].format = fmt
            w = linears[n].weight
            w.data = fmt.dequantize().to(device=w.device, dtype=w.dtype)

    install(trained)
    loss_after = distill_loss(student, teacher, eval_windows, params, device)
    kept = loss_after < loss_before
    if not kept:
        install(original)
    for p, flag in frozen:
        p.requires_grad_(flag)
    student.to("cpu")
    stats = {"loss_before": loss_before, "loss_after": loss_after, "kept": kept, "steps": steps,
             "train_losses": epoch_losses, "modules": len(names), "seconds": round(time.perf_counter() - start_time, 1)}
    if log is not None:
        log.note(f"distill: held-out loss {loss_before:.4f} -> {loss_after:.4f} "
                 f"({'kept' if kept else 'no gain, original scales restored'}), {steps} steps on {len(names)} "
                 f"linears in {stats['seconds']} s")
    return stats
