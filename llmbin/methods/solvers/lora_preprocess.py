"""PTQ1.61's "quantization preprocessing": a LoRA trained on the fake-quantized model, merged into the
full-precision weights before the model is quantized again.

    W_fp' = W_fp + (alpha / r) B A,   A [r, K], B [N, r]
with A, B trained by a causal-LM loss on the calibration windows through the FAKE-QUANTIZED linears
(y = x W_q^T + (alpha / r) dropout(x) A^T B^T): the adapters learn what the quantized model lacks, and
merged into the full-precision weights they move them towards values that survive quantization.
Only A and B train (AdamW); B starts at 0 so step 0 is the quantized model itself. Memory: gradient
checkpointing through the decoder layers (models/patching.py), bf16 autocast where the device has it. The dropout draws from
the global RNG, forked and seeded for the training: gradient checkpointing restores that RNG when it
re-runs a layer (so the recomputed masks are the forward's), and a rerun or a resumed run trains the
same adapters.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ...models.patching import checkpointed, eager_attention_on_cpu
from ...models.walk import decoder_layers, set_submodule
from .training import LOSS_WINDOWS


class LoRASettings(Protocol):
    """What the training reads of its settings (ptq161's `preprocess:` recipe section, LoRAPreprocess)."""

    r: int
    alpha: float
    dropout: float
    epochs: int
    lr: float
    batch_size: int  # calibration windows per step


class LoRALinear(nn.Module):
    """A frozen (fake-quantized) linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float, generator: torch.Generator):
        super().__init__()
        self.base, self.scale, self.p = base, alpha / r, dropout
        k, n, dev = base.in_features, base.out_features, base.weight.device
        bound = 1 / math.sqrt(k)  # nn.Linear's init range for A, zeros for B
        self.A = nn.Parameter((torch.rand(r, k, generator=generator) * 2 - 1).mul_(bound).to(dev))
        self.B = nn.Parameter(torch.zeros(n, r, device=dev))

    def forward(self, x):
        y = self.base(x)
        x = nn.functional.dropout(x, self.p, self.training)
        return y + (x.to(self.A.dtype) @ self.A.T @ self.B.T).to(y.dtype) * self.scale

    def delta(self) -> torch.Tensor:
        """(alpha / r) B A, the update merged into the full-precision weight [N, K] (float32, host)."""
        return (self.B.detach().float() @ self.A.detach().float()).cpu() * self.scale


def clm_loss(model, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    amp = torch.autocast(ids.device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    with amp:
        return model(input_ids=ids, labels=ids, use_cache=False).loss.float()


@torch.no_grad()
def mean_clm_loss(model, windows: torch.Tensor, batch: int, device, dtype) -> float:
    total = 0.0
    for s in range(0, len(windows), batch):
        ids = windows[s:s + batch].to(device)
        total += clm_loss(model, ids, dtype).item() * len(ids)
    return total / len(windows)


def train_lora(model: nn.Module, names: list[str], windows: torch.Tensor, cfg: LoRASettings, seed: int,
               device: torch.device, dtype: torch.dtype, log=None) -> tuple[dict[str, torch.Tensor], dict]:
    """Train LoRA adapters on the linears `names` of the (fake-quantized) model; the model is left as it was.
    -> ({name: merged delta [N, K]}, stats with the causal-LM loss on the first 16 windows before and after)."""
    start = time.perf_counter()
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    bases = {n: model.get_submodule(n) for n in names}
    generator = torch.Generator().manual_seed(seed)
    adapters = {n: LoRALinear(bases[n], cfg.r, cfg.alpha, cfg.dropout, generator) for n in names}
    for n in names:
        set_submodule(model, n, adapters[n])
    model.to(device)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                checkpointed(decoder_layers(model)[1]), eager_attention_on_cpu(model, device):
            torch.manual_seed(seed)
            loss_before, epoch_losses, loss_after = _train(model, adapters, windows, cfg, generator, device, dtype, log)
        deltas = {n: adapters[n].delta() for n in names}
    finally:
        model.eval()
        for n in names:
            set_submodule(model, n, bases[n])
        for p, flag in frozen:
            p.requires_grad_(flag)
    stats = {"loss_before": round(loss_before, 5), "loss_after": round(loss_after, 5),
             "epoch_losses": [round(v, 5) for v in epoch_losses], "steps": cfg.epochs * -(-len(windows) // cfg.batch_size),
             "trainable_params": sum(a.A.numel() + a.B.numel() for a in adapters.values()),
             "seconds": round(time.perf_counter() - start, 1)}
    return deltas, stats


def _train(model, adapters, windows, cfg, generator, device, dtype, log):
    model.eval()
    loss_before = mean_clm_loss(model, windows[:LOSS_WINDOWS], cfg.batch_size, device, dtype)
    opt = torch.optim.AdamW([p for a in adapters.values() for p in (a.A, a.B)], lr=cfg.lr, weight_decay=0.0)
    model.train()
    epoch_losses = []
    with tqdm(total=cfg.epochs * -(-len(windows) // cfg.batch_size), desc="preprocess: LoRA", unit="step",
              disable=log is None or not log.verbose) as bar:
        for _ in range(cfg.epochs):
            order, running = torch.randperm(len(windows), generator=generator), 0.0
            for s in range(0, len(windows), cfg.batch_size):
                ids = windows[order[s:s + cfg.batch_size]].to(device)
                loss = clm_loss(model, ids, dtype)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += loss.item() * len(ids)
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.4f}")
            epoch_losses.append(running / len(windows))
    model.eval()
    return loss_before, epoch_losses, mean_clm_loss(model, windows[:LOSS_WINDOWS], cfg.batch_size, device, dtype)


def lora_cost(model: nn.Module, names: list[str], windows: torch.Tensor, cfg: LoRASettings) -> str:
    """What the training will cost, said before it starts: steps, tokens, trainable parameters, FLOPs."""
    params = sum(p.numel() for p in model.parameters())
    shapes = [model.get_submodule(n).weight.shape for n in names]
    trainable = sum(cfg.r * (n + k) for n, k in shapes)
    tokens = windows.numel() * cfg.epochs
    flops = 6 * params * tokens  # forward, re-forward (checkpointing), backward to the inputs: 2 each per parameter
    steps = cfg.epochs * -(-len(windows) // cfg.batch_size)
    return (f"preprocess: LoRA r={cfg.r} on {len(names)} linears ({trainable / 1e6:.2f} M trainable parameters), "
            f"{steps} steps of {cfg.batch_size} windows x {windows.shape[1]} tokens ({cfg.epochs} epoch(s)), "
            f"~{flops / 1e12:.3g} TFLOP, plus a second quantization pass")
