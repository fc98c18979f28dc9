"""Attention with grouped-query heads on CPU: one decode token over a static KV cache, and many causal tokens at once.

With grouped-query attention, transformers' `sdpa` path expands the key/value heads to one per query
head (`repeat_kv`) whenever the step is being compiled, so every compiled decode step copied each
layer's whole static cache twice: on SmolLM2 (3 KV heads, 9 query heads, a 256-token cache) ~35 MB
of copies per token, more time than all its packed matmuls. For one query token, the query heads
that share a KV head can act as that head's query rows ([B, H_kv, G, D] against [B, H_kv, L, D])
under the mask every head shares: the same attention, no copy. On CPU in float32 the extension's
op (kernels/cpu/decode_attention.cpp, reached through kernels/ops.py) computes it, since SDPA's flash kernel spends ~35 us per call
on set-up for this shape (30 layers: ~1 ms per token); elsewhere SDPA does. `llmbin_sdpa` does this
and hands every other case (per-head masks, position biases, softcapping, ...) to transformers' own sdpa function.

Many tokens (scoring, prefill): with no mask but the causal one, float32 CPU tensors, head dim 64 or 128 on an
AVX-512 CPU and no gradient wanted, the extension's prefill_attention (kernels/cpu/prefill_attention.cpp) runs
instead of SDPA's flash kernel, ~2.2x faster on SmolLM2's shape (4 x 512 tokens: 8.0 against 17.6 ms a layer, Zen 4,
2 threads), equal to float32 rounding. Packed checkpoints loaded through transformers attend so
(integrations/transformers.py) unless LLMBIN_ATTENTION=sdpa; `model.set_attn_implementation("sdpa")` goes back
to transformers' own on a loaded model.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..errors import LlmbinError

NAME = "llmbin_sdpa"
CHOICES = ("llmbin", "sdpa")  # LLMBIN_ATTENTION: what a packed checkpoint attends with once loaded


def attention_choice() -> str:
    """LLMBIN_ATTENTION: llmbin (the default: this module's implementation) or sdpa (transformers' own)."""
    choice = os.environ.get("LLMBIN_ATTENTION", "").strip() or "llmbin"
    if choice not in CHOICES:
        raise LlmbinError(f"LLMBIN_ATTENTION={choice}: use llmbin (the default, faster on CPU) or sdpa (transformers')")
    return choice


def _cpu_op(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None):
    if not (q.device.type == "cpu" and q.dtype == key.dtype == value.dtype == torch.float32
            and (mask is None or mask.dtype in (torch.bool, torch.float32))):
        return None
    from ..kernels.ops import decode_attention_op  # here: `import llmbin` stays lean (tests/test_lean_import.py)

    return decode_attention_op()


def _prefill_op(module, query, key, value, attention_mask, dropout, kwargs):
    """The prefill op when it computes exactly this call (causal, no other mask, float32 CPU, no gradient), else None."""
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    if not (causal and attention_mask is None and not dropout and key.shape[2] >= query.shape[2] > 1
            and query.device.type == "cpu" and query.dtype == key.dtype == value.dtype == torch.float32
            and key.shape[-1] == value.shape[-1] == query.shape[-1] and query.shape[1] % key.shape[1] == 0):
        return None
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
        return None  # the op has no backward: training (the distillation stage) keeps SDPA
    from ..kernels.ops import prefill_attention_op

    return prefill_attention_op(query.shape[-1], query.shape[2])


def grouped_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, q_len, dim = query.shape
    plain = not kwargs.get("softcap") and kwargs.get("position_bias") is None and kwargs.get("s_aux") is None
    op = _prefill_op(module, query, key, value, attention_mask, dropout, kwargs) if q_len > 1 and plain else None
    if op is not None:  # [B, L, H, D], as sdpa_attention_forward returns it
        # more keys than queries with no mask: the prefill of an empty static cache, whose unwritten tail
        # sdpa_attention_forward drops the same way
        key, value = key[:, :, :q_len], value[:, :, :q_len]
        return op(query, key, value, dim ** -0.5 if scaling is None else float(scaling)), None
    shared_mask = attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1] == 1
                                             and attention_mask.shape[2] == 1)
    if q_len != 1 or not shared_mask or not plain or dropout or key.shape[1] * groups != heads:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    q = query.reshape(batch, heads // groups, groups, dim)
    scale = dim ** -0.5 if scaling is None else float(scaling)
    op = _cpu_op(q, key, value, attention_mask)
    if op is not None:
        out = op(q, key, value, attention_mask, scale)
    elif groups > 1:
        out = F.scaled_dot_product_attention(q, key, value, attn_mask=attention_mask, scale=scale)
    else:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `llmbin_sdpa` a transformers attention implementation (masks built as for `sdpa`); returns its name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, grouped_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def use_grouped_attention(model) -> bool:
    """Switch a model that attends with `sdpa` to `llmbin_sdpa` (True), else leave it alone (False): also when
    LLMBIN_ATTENTION=sdpa asks for transformers' own."""
    if attention_choice() == "sdpa":
        return False
    configs = [model.config] + [getattr(model.config, name) for name in ("text_config", "decoder")
                                if hasattr(model.config, name)]
    if not any(getattr(c, "_attn_implementation", None) == "sdpa" for c in configs):
        return False
    register()
    for c in configs:
        if getattr(c, "_attn_implementation", None) == "sdpa":
            c._attn_implementation = NAME
    return True
