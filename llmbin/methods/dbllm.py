"""DB-LLM: flexible dual binarization with GPTQ-style reconstruction, plus optional deviation-aware distillation.

Each weight group (64 input columns of one row) is w_hat = a1*b1 + a2*b2 with two {0,1} planes,
initialised at the 2-bit levels {-s, 0, s, 2s} (s = max|w|/2) and refitted by (optionally
diag(H)-weighted) least squares (solvers/dual_binarize.py). The quantizer runs inside the GPTQ
column loop: scales are fitted on the already-updated weights at each group's first column, and
every column's rounding error is fed back through the inverse-Hessian Cholesky factor.

Storage: BitPlaneFormat with 2 planes, scales [2, N, K/64] = (a1, a2), no offsets: 2 bits per
weight in the paper's convention, 2.5 all-in (two float16 scales per 64 weights).

Optional stage `distill` (off by default; solvers/distill.py): after all layers, only the group
scales train against the full-precision teacher's logits with an entropy-weighted KL,
w_t = 1 + gamma * H_t / log V (H_t the teacher's predictive entropy), on calibration windows or
on text sampled from the teacher itself (`distill.data=selfgen`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import LlmbinError
from .base import QuantMethod, QuantResult, register_method
from .solvers.distill import DistillParams, distill_scales
from .solvers.dual_binarize import DualBinaryColumnQuantizer
from .solvers.gptq_loop import gptq_quantize, prepare_hessian

PAPER_BITS = 2.0


@dataclass
class DBLLMParams:
    group_size: int = 64
    refit_iters: int = 5  # least-squares refit + re-assign rounds per group (each kept only if it helps)
    hessian_weighted: bool = True  # weight the refit's columns by diag(H) (damped)
    mirror_init: bool = True  # llmbin option: fit each group from both grid orientations, keep the smaller error
    blocksize: int = 128
    percdamp: float = 0.01
    act_order: bool = False
    distill: DistillParams = field(default_factory=DistillParams)

    def __post_init__(self):
        if self.refit_iters < 0:
            raise LlmbinError(f"refit_iters must be >= 0, not {self.refit_iters}")


@register_method
class DBLLM(QuantMethod):
    name = "dbllm"
    summary = "DB-LLM flexible dual binarization (2 {0,1} planes, group 64) with GPTQ feedback, optional scale distillation"
    params_cls = DBLLMParams

    def __init__(self, params):
        super().__init__(params)
        self.distill_stats: dict | None = None

    def _quantizer(self, weight, col_weights=None) -> DualBinaryColumnQuantizer:
        p = self.params
        return DualBinaryColumnQuantizer(*weight.shape, p.group_size, p.refit_iters, col_weights, p.mirror_init)

    def quantize_linear(self, name, weight, stats, generator) -> QuantResult:
        p = self.params
        col_weights = None
        if p.hessian_weighted:
            _, damped, _ = prepare_hessian(weight[:1], stats.hessian, p.percdamp)  # dead columns get H_jj = 1
            col_weights = torch.diag(damped).float()
        quantizer = self._quantizer(weight, col_weights)
        _, loss = gptq_quantize(weight, stats.hessian, quantizer, p.blocksize, p.percdamp, p.act_order)
        return QuantResult(quantizer.to_format(PAPER_BITS), {"loss": loss})

    def fallback_linear(self, name, weight) -> QuantResult:
        quantizer = self._quantizer(weight)
        quantizer.quantize_all(weight)
        return QuantResult(quantizer.to_format(PAPER_BITS), {"fallback": "dual binarization without feedback"})

    def on_model_end(self, model, ctx) -> bool:
        """The optional distillation; True when it changed (and kept) any scales, so the layers are rewritten."""
        d = self.params.distill
        if not d.enabled:
            return False
        if any(p.device.type == "meta" for p in model.parameters()):
            raise LlmbinError("distill.enabled needs the whole quantized model in memory, but the layers were streamed "
                              "(pipeline.stream=true); drop --set pipeline.stream=true or --set distill.enabled=false")
        from ..models.loading import load_model

        ctx.log.note(f"distill: loading the full-precision teacher {ctx.model_ref}")
        teacher, _ = load_model(ctx.model_ref, "cpu", next(model.parameters()).dtype)
        wanted = d.nsamples + d.eval_nsamples
        if d.data == "selfgen":
            from ..data.selfgen import generate_windows

            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator))
            windows = generate_windows(teacher.to(ctx.device), ctx.tokenizer, wanted, d.seqlen, seed)
        else:
            windows = ctx.calib_windows[:, : d.seqlen] if d.seqlen > 0 else ctx.calib_windows
        train, held_out = windows[: d.nsamples], windows[d.nsamples: wanted]
        if len(held_out) == 0:
            ctx.log.note("distill: no calibration windows left over for the held-out loss; using training windows")
            held_out = train[: max(d.eval_nsamples, 1)]
        self.distill_stats = distill_scales(model, teacher, train, held_out, ctx.results, d, ctx.generator,
                                            ctx.log, ctx.device)
        self.distill_stats.update(data=d.data, windows=list(train.shape))
        del teacher
        return bool(self.distill_stats["kept"])

    def model_card_notes(self) -> str:
        p = self.params
        lines = [
            f"DB-LLM flexible dual binarization: per row and group of {p.group_size} input columns, "
            "w = a1*b1 + a2*b2 with two {0,1} bit planes and two float16 scales (initial levels {-s, 0, s, 2s}, "
            f"s = max|w|/2{'; per group the fit also runs from the mirrored grid {-2s, -s, 0, s} and the orientation with the smaller error is kept' if p.mirror_init else ''}; "
            f"up to {p.refit_iters} least-squares refit rounds"
            f"{', diag(H)-weighted' if p.hessian_weighted else ''}), inside the GPTQ column loop "
            "(Hessian-guided error feedback). 2 bits per weight (paper), 2.5 all-in at group 64.",
        ]
        d = p.distill
        if d.enabled:
            lines.append(
                "\nDeviation-aware distillation: only the group scales were trained (A = A0 * m, Adam on m, "
                f"lr {d.lr}, {d.epochs} epoch(s), {d.nsamples} {d.data} windows of {d.seqlen} tokens) against the "
                "full-precision model's logits with the loss L = T^2 * mean_t[(1 + gamma * H_t / log V) * "
                "KL(p_t || q_t)], where p_t/q_t are the teacher/student next-token distributions at temperature "
                f"T = {d.temperature}, H_t the teacher's predictive entropy, V the vocabulary size and gamma = "
                f"{d.entropy_weight}: tokens on which the teacher is uncertain weigh up to (1 + gamma) times more. "
                "This weighting is llmbin's choice; the paper's exact formula is not public.")
            s = self.distill_stats
            if s:
                lines.append(f"Held-out distillation loss {s['loss_before']:.4f} -> {s['loss_after']:.4f} "
                             f"({'trained scales kept' if s['kept'] else 'no gain: original scales kept'}), "
                             f"{s['steps']} steps, {s['seconds']} s.")
        return "\n".join(lines)
