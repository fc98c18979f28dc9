"""The checkpoint's record of its packed token embeddings and head (written by calibrate/embeddings.py):

    "embeddings": {"setting": {...}, "tied": bool,
                   "input":  {"module": name, "meta": uniform meta} | null,
                   "output": {"module": name, "meta": uniform meta} | {"module": name, "tied_to": name} | null}

read to size and validate the checkpoint, and to give a model the packed modules before its weights load.
"""
from __future__ import annotations

import torch
from torch import nn

from ..formats import format_from_meta
from ..models.walk import set_submodule
from ..nn import QuantEmbedding, QuantLinear, TiedQuantHead, lookup_scale


def packed_embedding_modules(record: dict | None) -> dict[str, dict]:
    """module name -> format meta of every packed matrix the record lists (tied heads own none)."""
    found = {}
    for part in ("input", "output"):
        entry = (record or {}).get(part)
        if entry and "meta" in entry:
            found[entry["module"]] = entry["meta"]
    return found


def install_packed_embeddings(model: nn.Module, record: dict | None) -> None:
    """Loading: give `model` the packed modules the record describes (empty buffers, filled by the loader)."""
    if not record:
        return
    inp, out = record.get("input"), record.get("output")
    if inp:
        format_from_meta(inp["meta"])
        old = model.get_submodule(inp["module"])
        old_w = getattr(old, "weight", None)
        packed = QuantEmbedding(inp["meta"], getattr(old, "padding_idx", None),
                                old_w.dtype if old_w is not None else torch.float32, lookup_scale(old) or 1.0)
        packed._is_hf_initialized = True
        set_submodule(model, inp["module"], packed)
    if out:
        if "tied_to" in out:
            head = TiedQuantHead(model.get_submodule(out["tied_to"]))
        else:
            format_from_meta(out["meta"])
            old = model.get_submodule(out["module"])
            bias = getattr(old, "bias", None)
            head = QuantLinear(out["meta"], bias is not None, bias.dtype if bias is not None else torch.float32)
        head._is_hf_initialized = True
        set_submodule(model, out["module"], head)

    if out and "tied_to" in out:
        model.all_tied_weights_keys = {}
