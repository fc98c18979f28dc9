"""The checkpoint's record of its packed token embeddings and head (written by calibrate/embeddings.py):

    "embeddings": {"setting": {...}, "tied": bool,
                   "input":  {"module": name, "meta": uniform meta} | null,
                   "output": {"module": name, "meta": uniform meta} | {"module": name, "tied_to": name} | null}

read to size and validate the checkpoint, and to give a model the packed modules before its weights load.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import LlmbinError
from ..formats import format_from_meta
from ..models.walk import set_submodule
from ..nn import QuantEmbedding, QuantLinear, TiedQuantHead, lookup_scale
from .validation import existing_module


def packed_embedding_modules(record: dict | None) -> dict[str, dict]:
    """module name -> format meta of every packed matrix the record lists (tied heads own none)."""
    found = {}
    for part in ("input", "output"):
        entry = (record or {}).get(part)
        if entry and "meta" in entry:
            found[entry["module"]] = entry["meta"]
    return found


def _check_matrix(old: nn.Module, meta: dict, name: str) -> None:
    weight = getattr(old, "weight", None)
    want = (meta["out_features"], meta["in_features"])
    if weight is None or tuple(weight.shape) != want:
        got = "no weight" if weight is None else f"a [{weight.shape[0]}, {weight.shape[1]}] weight"
        raise LlmbinError(f"the checkpoint packs {name} as [{want[0]}, {want[1]}], but in this model it has {got}; "
                          "config.json is corrupted or from another model")


def install_packed_embeddings(model: nn.Module, record: dict | None) -> None:
    """Loading: give `model` the packed modules the record describes (empty buffers, filled by the loader)."""
    if not record:
        return
    inp, out = record.get("input"), record.get("output")
    if inp:
        format_from_meta(inp["meta"])
        old = existing_module(model, inp["module"])
        _check_matrix(old, inp["meta"], inp["module"])
        old_w = getattr(old, "weight", None)
        packed = QuantEmbedding(inp["meta"], getattr(old, "padding_idx", None),
                                old_w.dtype if old_w is not None else torch.float32, lookup_scale(old) or 1.0,
                                device=old_w.device if old_w is not None else None)  # "meta" while transformers loads
        packed._is_hf_initialized = True
        set_submodule(model, inp["module"], packed)
    if out:
        existing_module(model, out["module"])
        if "tied_to" in out:
            tied = existing_module(model, out["tied_to"])
            if not isinstance(tied, QuantEmbedding):
                raise LlmbinError(f"the checkpoint ties {out['module']} to {out['tied_to']}, which it does not store "
                                  "packed; config.json is corrupted")
            head = TiedQuantHead(tied)
        else:
            format_from_meta(out["meta"])
            old = existing_module(model, out["module"])
            _check_matrix(old, out["meta"], out["module"])
            bias = getattr(old, "bias", None)
            head = QuantLinear(out["meta"], bias is not None, bias.dtype if bias is not None else torch.float32,
                               device=old.weight.device)
        head._is_hf_initialized = True
        set_submodule(model, out["module"], head)

    if out and "tied_to" in out:
        model.all_tied_weights_keys = {}
