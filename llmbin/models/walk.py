"""Generic discovery of decoder layers and quantizable linears in any HF decoder model.

No per-architecture classes: decoder layers are the largest nn.ModuleList of identical blocks
(preferring classes named in `_no_split_modules`); linears are nn.Linear and GPT-2's Conv1D
(converted to nn.Linear so every method sees [out, in] weights); fused 3-D mixture-of-experts
parameters are split into one nn.Linear per expert so that each expert is calibrated on the
tokens routed to it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import LlmbinError
from .patching import StopForward, wrapped_forwards


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """-> (qualified name, ModuleList) of the decoder blocks."""
    no_split = set(getattr(model, "_no_split_modules", None) or [])
    best = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(m).__name__ for m in module}
        if len(kinds) != 1:
            continue
        score = (next(iter(kinds)) in no_split, len(module), -name.count("."))
        if best is None or score > best[0]:
            best = (score, name, module)
    if best is None or not any(isinstance(m, (nn.Linear,)) or _is_conv1d(m) for m in best[2][0].modules()):
        raise LlmbinError(f"{type(model).__name__}: no stack of decoder layers with linear layers found; "
                          "this architecture is not supported")
    return best[1], best[2]


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def conv1d_to_linear(conv: nn.Module) -> nn.Linear:
    weight = conv.weight  # Conv1D stores [in, out]
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=conv.bias is not None,
                       dtype=weight.dtype, device=weight.device)
    linear.weight.data.copy_(weight.data.T)
    if conv.bias is not None:
        linear.bias.data.copy_(conv.bias.data)
    return linear


class UnfusedExperts(nn.Module):
    """Fused MoE experts (3-D gate_up_proj / down_proj parameters) as one pair of nn.Linear per expert.

    Same call signature and routing arithmetic as transformers' fused experts modules.
    """

    def __init__(self, fused: nn.Module):
        super().__init__()
        gate_up, down = fused.gate_up_proj, fused.down_proj
        self.num_experts = gate_up.shape[0]
        self.act_fn = fused.act_fn
        self.gate_up = nn.ModuleList()
        self.down = nn.ModuleList()
        for e in range(self.num_experts):
            self.gate_up.append(_linear_from(gate_up[e]))
            self.down.append(_linear_from(down[e]))

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        for e in range(self.num_experts):
            token_idx, slot = torch.where(top_k_index == e)
            if token_idx.numel() == 0:
                continue
            gate, up = self.gate_up[e](hidden_states[token_idx]).chunk(2, dim=-1)
            h = self.down[e](self.act_fn(gate) * up) * top_k_weights[token_idx, slot, None]
            out.index_add_(0, token_idx, h.to(out.dtype))
        return out


def _linear_from(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype, device=weight.device)
    linear.weight.data.copy_(weight.data)
    return linear


def _is_fused_experts(module: nn.Module) -> bool:
    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return (isinstance(gu, nn.Parameter) and isinstance(down, nn.Parameter) and gu.dim() == 3
            and hasattr(module, "act_fn"))


def make_linears_explicit(root: nn.Module) -> None:
    """Replace Conv1D by nn.Linear and fused experts by UnfusedExperts, in place."""
    for name, module in list(root.named_modules()):
        replacement = None
        if _is_conv1d(module):
            replacement = conv1d_to_linear(module)
        elif _is_fused_experts(module):
            replacement = UnfusedExperts(module)
        if replacement is not None:
            set_submodule(root, name, replacement)


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def find_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}


_CACHE_KWARGS = ("past_key_value", "past_key_values", "layer_past")


@torch.no_grad()
def capture_layer_calls(model: nn.Module, layers: nn.ModuleList, input_ids: torch.Tensor, batch_size: int):
    """The model's own call of every decoder layer, per batch: [(layer-0 hidden [B, T, H], [(args, kwargs) per layer])].

    The model's forward runs with each decoder layer short-circuited (it records its call and passes its
    input on), so every layer gets exactly the arguments the model gives it (its mask kind, its rotary table,
    any per-layer kwargs) at the cost of the embeddings and the mask/rotary set-up only. Tensors the model
    shares between layers (one mask per layer type) stay shared.
    """
    captured, first = [], []
    calls: list = [None] * len(layers)
    last = len(layers) - 1

    def recorder(index, _forward):
        def forward(*args, **kwargs):
            kwargs = {k: v for k, v in kwargs.items() if k not in _CACHE_KWARGS}
            kwargs["use_cache"] = False
            hidden, args = (args[0], tuple(args[1:])) if args else (kwargs.pop("hidden_states"), ())
            if index == 0:
                first.append(hidden.detach())
            calls[index] = (args, kwargs)
            if index == last:
                raise StopForward
            return hidden
        return forward

    with wrapped_forwards(layers, recorder):
        for start in range(0, len(input_ids), batch_size):
            first.clear()
            calls[:] = [None] * len(layers)
            try:
                model(input_ids=input_ids[start:start + batch_size], use_cache=False)
            except StopForward:
                pass
            missed = [i for i, call in enumerate(calls) if call is None]
            if missed:
                raise LlmbinError(f"{type(model).__name__} did not call decoder layers {missed} in its forward pass; "
                                  "this architecture is not supported")
            captured.append((first[0], list(calls)))
    return captured


def layer_output(out):
    """Decoder layers return a tensor or a tuple whose first item is the hidden state."""
    return out[0] if isinstance(out, (tuple, list)) else out
