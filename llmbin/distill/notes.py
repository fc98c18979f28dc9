"""What the distillation stage says of itself: in the model card, and in quantization_config."""
from __future__ import annotations

from dataclasses import asdict

from .loss import FORMULA
from .options import DistillOptions


def card_notes(options: DistillOptions, stats: dict) -> str:
    weighting = (f"loss entropy_kl: {FORMULA}, gamma = {options.entropy_weight}: tokens on which the teacher is "
                 f"uncertain weigh up to (1 + gamma) times more (DB-LLM's deviation-aware distillation; the paper's "
                 f"exact weighting is not public, this is llmbin's choice)" if options.loss == "entropy_kl"
                 else f"loss kl: {FORMULA.replace('(1 + gamma * H_t / log V) * ', '')}")
    ce = f" plus {options.ce_weight} x causal-LM cross-entropy" if options.ce_weight > 0 else ""
    lines = [
        "Distillation against the full-precision model: every continuous tensor of the packed linears "
        f"({', '.join(stats.get('tensors', []))}) was trained with the codes, planes, masks and zero points frozen, "
        f"then rounded to float16 as stored. {weighting}{ce}; T = {options.temperature}, teacher top-{options.topk}. "
        f"{stats['train_windows'][0]} {options.data} windows of {options.seqlen} tokens, {options.epochs} epoch(s), "
        f"batch {options.batch_size}, Adam lr {options.lr} ({options.warmup:.0%} warm-up, cosine) on relative changes; held-out windows disjoint "
        "from the training ones.",
        f"Held-out distillation loss {stats['loss_before']:.4f} -> {stats['loss_after']:.4f} "
        f"({'trained tensors kept' if stats['kept'] else 'no gain: original tensors kept'}), {stats['steps']} steps.",
    ]
    return "\n".join(lines)


def config_entry(options: DistillOptions, stats: dict) -> dict:
    """What goes into quantization_config (deterministic: no timings)."""
    return {"options": asdict(options), "loss_before": stats["loss_before"], "loss_after": stats["loss_after"],
            "kept": stats["kept"], "steps": stats["steps"], "tensors": stats["tensors"]}
