"""PTQ1.61 (ACL 2025): structured salient-channel mask, 4-bit salient channels, block-trained binarization scales.

Per decoder layer:
1. mask: per linear input, act[c] = max (or mean) |x_c| over the calibration tokens; the top channels
   are salient: ceil(salient_ratio * K) when a ratio is set, else as many as keep every linear of the
   group within `bpw` all-in bits (solvers/salient_budget.py); linears sharing an input (q/k/v, gate/up)
   share one mask;
2. salient columns: 4-bit per-row min-max (range of the salient columns, or of the entire row as the
   reference); the others: r1 r2^T * (alpha * sign(W - mu) + mu) with mu frozen and alpha, r1, r2 learnable;
   the signs and 4-bit codes come from the GPTQ column loop on the input Hessian (sign_fix=gptq,
   solvers/structured_feedback.py) or plain rounding;
3. block-wise training of alpha, r1, r2 against Y_fp (full-precision layer on the full-precision chain)
   and Y_fq (full-precision layer on the quantized chain), see solvers/block_training.py.
The method keeps the full-precision chain itself (`_fp_chain`), one tensor of layer inputs.
Packed as one bit plane (A = 2 alpha r1, C = (mu - alpha) r1, in_scale = r2) plus a 4-bit block; the channel
order is stored as a K-bit salient mask (formats/bitplane.py).
"""
from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from ..errors import LlmbinError
from ..models.walk import layer_output, set_submodule
from .base import QuantMethod, QuantResult, register_method
from .ptq161_preprocess import LoRAPreprocess, run_preprocess
from .solvers.input_stats import InputStats
from .solvers.block_training import ChannelGather, StructuredBinaryLinear, TrainConfig, evaluate_block, train_block
from .solvers.salient_budget import salient_count_for_budget
from .solvers.structured_feedback import gptq_signs, hessian_error
from .solvers.structured_mask import StructuredBinary, salient_channel_mask
from .solvers.training import LOSS_WINDOWS, compute_dtype



@dataclass
class PTQ161Params:
    act_stat: str = "max"  # max (reference code) | mean (paper's pseudocode) of |x_c|
    salient_ratio: float | None = None  # fraction of salient input channels; set, it overrides bpw
    bpw: float = 1.65  # all-in bits per weight every quantized linear stays within (picks the salient count)
    sign_fix: str = "gptq"  # gptq: signs and 4-bit codes by the GPTQ column loop (Hessian error feedback) | plain
    salient_grid: str = "salient"  # salient: 4-bit range of the salient columns | row: of the entire row (reference)
    percdamp: float = 0.1  # GPTQ damping of sign_fix=gptq (0.1, not 0.01: down_proj's Hessian overfits few windows)
    epochs: int = 20
    lr_alpha: float = 5e-4
    lr_rowcol: float = 1e-3
    batch_size: int = 1  # calibration windows per optimizer step
    lr_schedule: str = "constant"  # constant | cosine
    alpha_init: str = "mean_abs"  # mean_abs (reference: mean |w|) | lsq (mean |w - mu|)
    train_mu: bool = False  # also train mu (an extension; costs no stored bit)
    mse: str = "absolute"  # absolute (paper) | relative: each token's error / |y_t|^2 (attention sinks stop owning it)
    shuffle: bool = True  # window order reshuffled every epoch (seeded)
    precision: str = "auto"  # auto (bf16 on CUDA and on CPUs with AMX, else fp32) | bf16 | fp32
    preprocess: LoRAPreprocess = field(default_factory=LoRAPreprocess)

    def check(self) -> None:
        choices = {"act_stat": ("max", "mean"), "lr_schedule": ("constant", "cosine"),
                   "alpha_init": ("mean_abs", "lsq"), "precision": ("auto", "bf16", "fp32"),
                   "mse": ("absolute", "relative"), "sign_fix": ("gptq", "plain"), "salient_grid": ("salient", "row")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise LlmbinError(f"ptq161 {key}={getattr(self, key)!r}; choose one of {', '.join(allowed)}")
        if self.salient_ratio is not None and not 0 <= self.salient_ratio < 1:
            raise LlmbinError(f"ptq161 salient_ratio={self.salient_ratio} must be in [0, 1) (or null: chosen by bpw)")
        if not 1 <= self.bpw <= 5:
            raise LlmbinError(f"ptq161 bpw={self.bpw} must be in [1, 5] (all-in bits per weight, e.g. bpw=1.61)")
        if self.percdamp <= 0:
            raise LlmbinError(f"ptq161 percdamp={self.percdamp} must be > 0")
        if self.epochs < 0 or self.batch_size < 1:
            raise LlmbinError("ptq161 epochs must be >= 0 and batch_size >= 1")
        pre = self.preprocess
        if pre.r < 1 or pre.epochs < 1 or pre.batch_size < 1 or pre.lr <= 0 or not 0 <= pre.dropout < 1:
            raise LlmbinError("ptq161 preprocess needs r, epochs, batch_size >= 1, lr > 0 and dropout in [0, 1)")
        if pre.windows < 0 or pre.pass1_epochs < 0:
            raise LlmbinError("ptq161 preprocess.windows and preprocess.pass1_epochs must be >= 0 (windows 0: all)")

    def __post_init__(self):
        self.check()


def call_for_windows(obj, batch: int, windows: int):
    """A layer call's extra arguments for `windows` windows instead of `batch`, floating tensors in float32."""
    if isinstance(obj, torch.Tensor):
        if obj.dim() and obj.shape[0] == batch != windows:
            if windows > batch:
                raise LlmbinError(f"ptq161 batch_size {windows} is above pipeline.batch_size {batch}")
            obj = obj[:windows]
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(call_for_windows(o, batch, windows) for o in obj)
    if isinstance(obj, dict):
        return {k: call_for_windows(v, batch, windows) for k, v in obj.items()}
    return obj


@register_method
class PTQ161(QuantMethod):
    name = "ptq161"
    summary = "PTQ1.61: structured 4-bit salient input channels + binarized rest with block-trained scales (~1.6 bits)"
    params_cls = PTQ161Params
    stats = frozenset()  # act |x| max/mean only, collected while computing the block targets

    def __init__(self, params):
        params.check()
        super().__init__(params)
        self._fp_chain: torch.Tensor | None = None  # inputs of the current layer on the full-precision chain
        self.fixed_masks: dict[str, torch.Tensor] = {}  # qualified name -> salient mask (preprocessing's pass 2)
        self.preprocess_stats: dict = {}
        self._preprocess_area = None

    # -- masks and the fixed parts (signs, 4-bit codes) -------------------------------------------------------
    def salient_mask(self, act: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        """The shared mask of linears [N_i, K] reading one input: an explicit salient_ratio, else as many
        salient channels as the bpw budget allows every one of them (solvers/salient_budget.py)."""
        p = self.params
        if p.salient_ratio is not None:
            return salient_channel_mask(act, p.salient_ratio)
        return salient_channel_mask(act, None, salient_count_for_budget(tuple(shapes), p.bpw))

    def initial(self, weight: torch.Tensor, mask: torch.Tensor, hessian: torch.Tensor | None):
        """-> (StructuredBinary before training, metrics): plain signs, then GPTQ's where sign_fix=gptq."""
        p = self.params
        sb = StructuredBinary.init(weight, mask, p.alpha_init, p.salient_grid)
        if hessian is None:
            return sb, {}
        metrics = {"herr_plain": round(hessian_error(weight, sb.dequantize(), hessian), 5)}
        if p.sign_fix == "gptq":
            sb = gptq_signs(sb, weight, hessian, p.percdamp)
            metrics["herr_gptq"] = round(hessian_error(weight, sb.dequantize(), hessian), 5)
        return sb, metrics

    # -- single linears (no training): the data-free fallback and direct use ---------------------------------
    def quantize_linear(self, name, weight, stats, generator) -> QuantResult:
        act = stats.absmax if self.params.act_stat == "max" else stats.absmean
        sb, metrics = self.initial(weight, self.salient_mask(act, [tuple(weight.shape)]), stats.hessian)
        return QuantResult(sb.rounded().to_format(), {"paper_bits": round(sb.paper_bits(), 4), **metrics})

    def fallback_linear(self, name, weight) -> QuantResult:
        mask = self.salient_mask(weight.float().norm(dim=0), [tuple(weight.shape)])  # no inputs: column norms
        sb = StructuredBinary.init(weight, mask, self.params.alpha_init, self.params.salient_grid)
        return QuantResult(sb.rounded().to_format(), {"fallback": "untrained, mask by weight column norm"})

    # -- one decoder layer ------------------------------------------------------------------------------------
    def quantize_layer(self, ctx) -> None:
        p, start = self.params, time.perf_counter()
        dtype = compute_dtype(ctx.device, p.precision)
        batches = list(ctx.batches())
        sizes = [h.shape[0] for h, _, _ in batches]
        if ctx.index > 0 and (self._fp_chain is None or self._fp_chain.shape[0] != sum(sizes)):
            raise LlmbinError("ptq161 lost its full-precision chain: layers must be quantized in order from layer 0")
        y_fq, stats = self._targets_and_stats(ctx, batches, dtype)
        if ctx.index == 0:  # both chains start from the same captured input
            self._fp_chain = y_fp = y_fq
        else:
            y_fp = self._advance_fp_chain(ctx, batches, dtype)
        if not ctx.linears:
            return
        x_q = torch.cat([h for h, _, _ in batches]).float()
        del batches
        _, args, kwargs = next(iter(ctx.batches()))
        qlayer, modules, init_metrics = self._quantized_copy(ctx, stats, dtype)
        calls: dict[int, tuple] = {}

        def run(x):
            if len(x) not in calls:
                calls[len(x)] = (call_for_windows(args, sizes[0], len(x)), call_for_windows(kwargs, sizes[0], len(x)))
            a, k = calls[len(x)]
            return layer_output(qlayer(x, *a, **k))

        probe = slice(0, LOSS_WINDOWS)
        relative = p.mse == "relative"
        loss_before = evaluate_block(run, x_q[probe], y_fp[probe], y_fq[probe], sizes[0], relative)
        cfg = TrainConfig(p.epochs, p.lr_alpha, p.lr_rowcol, p.batch_size, p.lr_schedule, p.shuffle, relative)
        history = train_block(run, x_q, y_fp, y_fq, list(modules.values()), cfg, ctx.generator) if p.epochs else []
        loss_after = evaluate_block(run, x_q[probe], y_fp[probe], y_fq[probe], sizes[0], relative)
        for m in modules.values():
            m.gather.clear()
        for name, module in modules.items():
            sb = module.export()
            ctx.apply(name, QuantResult(sb.rounded().to_format(), {"paper_bits": round(sb.paper_bits(), 4)}))
            ctx.log.module(module=f"{ctx.prefix}.{name}", layer=ctx.index, format="bitplane",
                           k_salient=sb.k_salient, salient_ratio=round(sb.k_salient / sb.perm.numel(), 4),
                           paper_bits=round(sb.paper_bits(), 4), **init_metrics[name],
                           alpha=round(sb.alpha.mean().item(), 5), r1=round(sb.r1.mean().item(), 4),
                           r2=round(sb.r2.mean().item(), 4))
        for name in set(ctx.linears) - set(modules):
            result = self.fallback_linear(name, ctx.linears[name].weight.data.float().cpu())
            ctx.apply(name, result)
            ctx.log.note(f"{ctx.prefix}.{name} saw no calibration tokens: {result.metrics['fallback']}")
        ctx.log.module(module=ctx.prefix, layer=ctx.index, block_loss_before=round(loss_before, 6),
                       block_loss_after=round(loss_after, 6),
                       epoch_losses=[round(v, 6) for v in history], matmul_dtype=str(dtype).removeprefix("torch."),
                       seconds=round(time.perf_counter() - start, 2))

    def _autocast(self, ctx, dtype):
        return torch.autocast(ctx.device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    def _targets_and_stats(self, ctx, batches, dtype):
        """Y_fq = FP layer on the quantized chain, observing each input group's |x| statistics on the way."""
        handles, stats = [], {}
        want = {"hessian"} if self.params.sign_fix == "gptq" else set()
        for group in ctx.groups:
            s = InputStats(ctx.linears[group[0]].in_features, want, ctx.device)
            handles.append(ctx.linears[group[0]].register_forward_hook(lambda _m, inp, _o, s=s: s.update(inp[0])))
            stats.update({n: s for n in group})
        try:
            with self._autocast(ctx, dtype):
                y = torch.cat([ctx.forward(h, a, k).float() for h, a, k in batches])
        finally:
            for h in handles:
                h.remove()
        return y, stats

    def _advance_fp_chain(self, ctx, batches, dtype):
        """Y_fp: this layer at full precision on the full-precision chain (layer 0: on the captured inputs)."""
        inputs = ([h for h, _, _ in batches] if ctx.index == 0
                  else self._fp_chain.split([h.shape[0] for h, _, _ in batches]))
        with self._autocast(ctx, dtype):
            self._fp_chain = torch.cat([ctx.forward(x, a, k).float() for x, (_, a, k) in zip(inputs, batches)])
        return self._fp_chain

    def _quantized_copy(self, ctx, stats, dtype):
        """A float32 copy of the layer with every calibrated linear replaced by a StructuredBinaryLinear."""
        p = self.params
        qlayer = copy.deepcopy(ctx.layer).float()
        qlayer.requires_grad_(False)
        modules, metrics = {}, {}
        for group in ctx.groups:
            names = [n for n in group if stats[n].tokens > 0]
            if not names:
                continue
            act = stats[names[0]].absmax if p.act_stat == "max" else stats[names[0]].absmean
            mask = self.fixed_masks.get(f"{ctx.prefix}.{names[0]}")  # preprocessing: the first pass's mask
            if mask is None:
                mask = self.salient_mask(act, [tuple(ctx.linears[n].weight.shape) for n in names])
            gather = None
            for name in names:
                linear = ctx.linears[name]
                sb, metrics[name] = self.initial(linear.weight.data, mask, stats[name].hessian)
                gather = gather or ChannelGather(sb.perm.to(ctx.device), dtype)
                modules[name] = StructuredBinaryLinear(sb, linear.bias, gather, p.train_mu)
                set_submodule(qlayer, name, modules[name])
        return qlayer, modules, metrics

    # -- quantization preprocessing (preprocess.enabled) ------------------------------------------------------
    def prepare_model(self, model, ctx, work, quantize_pass) -> None:
        """Pass 1 (this method without preprocessing), a LoRA trained on the fake-quantized model, merged into
        the full-precision weights; the pipeline's own pass then quantizes the merged model with pass 1's masks.
        Pass 1's layers and the trained update live in the work area, so --resume redoes neither."""
        if self.params.preprocess.enabled:
            self.fixed_masks, self.preprocess_stats, self._preprocess_area = run_preprocess(
                self, model, ctx, work, quantize_pass)

    def on_model_end(self, model, ctx) -> bool:
        if self._preprocess_area is not None:  # pass 2 is complete: pass 1's layers must not enter the checkpoint
            self._preprocess_area.discard()
        return False

    def on_layer_skipped(self, ctx) -> None:
        """Resume: advance the full-precision chain through this layer (its weights are still full precision)."""
        self._advance_fp_chain(ctx, list(ctx.batches()), compute_dtype(ctx.device, self.params.precision))

    def model_card_notes(self) -> str:
        p = self.params
        share = (f"{p.salient_ratio:.0%} of input channels" if p.salient_ratio is not None else
                 f"the input channels a budget of {p.bpw} all-in bits per linear allows (quant_log: salient_ratio)")
        signs = "GPTQ error feedback (binarized columns first, salient last)" if p.sign_fix == "gptq" else "plain rounding"
        pre = p.preprocess
        variant = (f"PTQ1.61 with quantization preprocessing (pass 1 with {pre.pass1_epochs} block-training epoch(s); "
                   f"LoRA r {pre.r}, alpha {pre.alpha}, {pre.epochs} epoch(s) on "
                   f"{f'the first {pre.windows} calibration windows' if pre.windows else 'the calibration text'}, "
                   f"merged, then quantized again with the first pass's masks; causal-LM loss "
                   f"{self.preprocess_stats.get('loss_before')} -> {self.preprocess_stats.get('loss_after')})"
                   if pre.enabled else "PTQ1.61 without quantization preprocessing (PTQ1.61*)")
        return (f"{variant}: {share} (by {p.act_stat} |x|) at 4 bits "
                f"(range of {'the salient columns' if p.salient_grid == 'salient' else 'the entire row'}), the rest "
                f"binarized; signs and codes by {signs}; scales block-trained "
                f"({p.epochs} epochs, lr {p.lr_alpha}/{p.lr_rowcol}, {p.lr_schedule}).")
