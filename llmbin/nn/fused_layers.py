"""A decoder layer's elementwise parts in one pass each on CPU: RMS norm, SiLU(gate) * up, rotary embedding.

transformers writes them as chains of small torch ops (RMS norm: pow, mean, add, rsqrt, mul, mul; rotary: slice,
neg, cat, mul, add for q and for k), each a dispatch, an allocation and a pass over memory. Once the packed products
are fast these chains are a large share of a forward: ~13 ms of a packed SmolLM2's ~89 ms prefill of 64 tokens
(Zen 4, 2 threads). The extension's ops (kernels/cpu/layer_ops.cpp) compute the same maths in one pass each.

`use_fused_layers(model)` gives the modules of the architectures whose forward is known here (Llama, Qwen2) a
subclass that takes the op when it computes exactly the call (float32 CPU tensors, no gradient wanted, not inside
torch.compile, whose own fusion the compiled decode step keeps) and transformers' forward otherwise. The classes keep
their names with a `Fused` prefix and stay instances of the originals. LLMBIN_LAYER_OPS=torch leaves a model alone.
"""
from __future__ import annotations

import functools
import inspect
import os
import sys

import torch

from ..errors import LlmbinError, warn_once

CHOICES = ("llmbin", "torch")  # LLMBIN_LAYER_OPS


def layer_ops_choice() -> str:
    choice = os.environ.get("LLMBIN_LAYER_OPS", "").strip() or "llmbin"
    if choice not in CHOICES:
        raise LlmbinError(f"LLMBIN_LAYER_OPS={choice}: use llmbin (the default, faster on CPU) or torch "
                          "(transformers' own elementwise ops)")
    return choice


def _exact(*tensors: torch.Tensor) -> bool:
    """Whether the extension's ops compute this call exactly (the classes exist only where the ops run at all)."""
    if torch.compiler.is_compiling():
        return False
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))  # the ops have no backward


class FusedRMSNorm:
    def forward(self, hidden_states):
        if not _exact(hidden_states, self.weight):
            return super().forward(hidden_states)
        return torch.ops.llmbin_cpu.rms_norm(hidden_states.contiguous(), self.weight.contiguous(),
                                             float(self.variance_epsilon))


class FusedGatedMLP:
    """down(silu(gate(x)) * up(x)); the class is only given to MLPs whose activation is SiLU."""

    def forward(self, x):
        gate, up = self.gate_proj(x), self.up_proj(x)
        if _exact(gate, up):
            return self.down_proj(torch.ops.llmbin_cpu.silu_mul(gate.contiguous(), up.contiguous()))
        return self.down_proj(self.act_fn(gate) * up)


class FusedRotaryAttention:
    """transformers' Llama/Qwen2 attention forward with the rotary embedding of q and k as one op.

    The rotated q and k stay in the projections' [B, T, heads, D] layout, handed on as [B, heads, T, D] views:
    every attention function and cache update takes strided tensors. The forward reproduced is transformers 5.2x's
    (REPRODUCED below, checked on the installed source: 5.16's names its cache past_key_values and updates it
    otherwise, and keeps its own attention)."""

    REPRODUCED = ("apply_rotary_pos_emb(query_states, key_states, cos, sin)",
                  "cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)",
                  "ALL_ATTENTION_FUNCTIONS.get_interface(", "self.o_proj(attn_output)")

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        cos, sin = position_embeddings if position_embeddings is not None else (None, None)
        if (cos is None or hidden_states.dim() != 3 or cos.dim() != 3 or self.training or self.head_dim % 32
                or not _exact(hidden_states, cos, sin)):
            return super().forward(hidden_states, position_embeddings, attention_mask, cache=cache, **kwargs)
        batch, tokens, _ = hidden_states.shape
        dim = self.head_dim
        q, k = torch.ops.llmbin_cpu.rotary_qk(self.q_proj(hidden_states).contiguous(), self.k_proj(hidden_states).contiguous(),
                             cos.contiguous(), sin.contiguous(), dim)
        q = q.view(batch, tokens, -1, dim).transpose(1, 2)
        k = k.view(batch, tokens, -1, dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, tokens, -1, dim).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, self._eager_attention)
        extra = {"sliding_window": self.sliding_window} if hasattr(self, "sliding_window") else {}
        out, weights = attend(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling, **extra, **kwargs)
        return self.o_proj(out.reshape(batch, tokens, -1).contiguous()), weights


# the transformers classes whose forward the subclasses above reproduce (transformers 5.x)
KNOWN = {
    "LlamaRMSNorm": FusedRMSNorm, "Qwen2RMSNorm": FusedRMSNorm,
    "LlamaMLP": FusedGatedMLP, "Qwen2MLP": FusedGatedMLP,
    "LlamaAttention": FusedRotaryAttention, "Qwen2Attention": FusedRotaryAttention,
}
_subclasses: dict[type, type] = {}


def _fused_class(cls: type, mixin: type) -> type:
    if cls not in _subclasses:
        extra = {}
        if mixin is FusedRotaryAttention:  # the modeling file's own eager attention, as its forward falls back to
            extra["_eager_attention"] = staticmethod(sys.modules[cls.__module__].eager_attention_forward)
        fused = type(f"Fused{cls.__name__}", (mixin, cls), {"__module__": __name__, **extra})
        setattr(sys.modules[__name__], fused.__name__, fused)  # where pickle looks for it (torch.save of a model)
        _subclasses[cls] = fused
    return _subclasses[cls]


@functools.cache  # per class: a model has one attention class and dozens of layers
def _reproduces(cls: type) -> bool:
    """Whether cls.forward is the transformers forward FusedRotaryAttention reproduces (read from its source)."""
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return all(line in source for line in FusedRotaryAttention.REPRODUCED)


def _fits(module, mixin) -> bool:
    if mixin is FusedGatedMLP:
        return getattr(getattr(module, "config", None), "hidden_act", None) in ("silu", "swish")
    if mixin is FusedRotaryAttention and not _reproduces(type(module)):
        import transformers

        warn_once(f"transformers {transformers.__version__}'s {type(module).__name__} forward is not the one "
                  "nn/fused_layers.py reproduces: its rotary embedding runs as transformers' own ops")
        return False
    return True


def use_fused_layers(model) -> int:
    """Give the model's known modules their fused subclass; returns how many changed (0 with LLMBIN_LAYER_OPS=torch,
    and where the ops do not run: no extension, no AVX-512)."""
    if layer_ops_choice() == "torch":
        return 0
    from ..kernels.ops import layer_ops  # here: `import llmbin` stays lean (tests/test_lean_import.py)

    if layer_ops() is None:
        return 0
    changed = 0
    for module in model.modules():
        mixin = KNOWN.get(type(module).__name__)
        if mixin is not None and _fits(module, mixin):
            module.__class__ = _fused_class(type(module), mixin)
            changed += 1
    return changed
