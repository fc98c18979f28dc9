"""Mutations of a packed checkpoint directory, each with what loading it must do.

"refuse": the structure or an index changed (shapes, dtypes, index ranges, popcounts, metadata, truncation, shard
names): loading must stop with one LlmbinError line, before any kernel reads anything. "load": only values changed
(code bits, finite scales): the model must load and compute. Every mutation is applied to a copy.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

INDEX_TENSORS = ("perm", "sparse_colidx", "sparse_rowptr", "salient_rowptr")
BIT_INDEX_TENSORS = ("salient_mask", "mask")  # one bit per column: their popcount is declared in the metadata
CODE_TENSORS = ("planes", "qweight", "salient_q")
ZERO_POINTS = ("zeros", "salient_zero")
BAD_VALUES = [-1, 0, 10**9, 2**40, "x", None, 1.5, True, [], {}]


def config(ckpt: Path) -> dict:
    return json.loads((ckpt / "config.json").read_text())


def packed_modules(ckpt: Path) -> dict[str, dict]:
    qc = config(ckpt)["quantization_config"]
    found = dict(qc["modules"])
    for role in ("input", "output"):
        entry = (qc.get("embeddings") or {}).get(role)
        if entry and "meta" in entry:
            found[entry["module"]] = entry["meta"]
    return found


def shard_of(ckpt: Path) -> dict[str, str]:
    index = ckpt / "model.safetensors.index.json"
    if index.exists():
        return json.loads(index.read_text())["weight_map"]
    return {k: "model.safetensors" for k in load_file(ckpt / "model.safetensors")}


def edit_tensors(ckpt: Path, key: str, change) -> None:
    """Load the shard holding `key`, let `change(tensors)` edit the dict, write it back."""
    shard = ckpt / shard_of(ckpt)[key]
    tensors = load_file(shard)
    change(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})


def pick(rng, ckpt: Path, names) -> str | None:
    keys = sorted(k for k in shard_of(ckpt) if k.rpartition(".")[2] in names)
    return rng.choice(keys) if keys else None


def index_out_of_range(ckpt, rng):
    key = pick(rng, ckpt, INDEX_TENSORS)
    if key is None:
        return None
    value = rng.choice([10**7, -1, -(2**31), 2**31 - 1, 40000])

    def change(t):
        flat = t[key].view(-1)
        big = torch.tensor(value).clamp(torch.iinfo(flat.dtype).min, torch.iinfo(flat.dtype).max)
        flat[rng.randrange(flat.numel())] = big.to(flat.dtype)
    edit_tensors(ckpt, key, change)
    return f"{key}: one entry set to {value}", "refuse"


def index_duplicate(ckpt, rng):
    key = pick(rng, ckpt, ("perm",))
    if key is None:
        return None

    def change(t):
        flat = t[key]
        i, j = rng.sample(range(flat.numel()), 2)
        flat[i] = flat[j]
    edit_tensors(ckpt, key, change)
    return f"{key}: two entries equal", "refuse"


def flip_index_bit(ckpt, rng):
    key = pick(rng, ckpt, BIT_INDEX_TENSORS)
    if key is None:
        return None

    def change(t):
        flat = t[key].view(-1)
        i = rng.randrange(flat.numel())
        flat[i] = flat[i] ^ (1 << rng.randrange(31))
    edit_tensors(ckpt, key, change)
    return f"{key}: one bit flipped", "refuse"


def flip_code_bits(ckpt, rng):
    key = pick(rng, ckpt, CODE_TENSORS)
    if key is None:
        return None

    def change(t):
        flat = t[key].view(-1)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(flat.numel())
            bits = 8 * flat.element_size() - 1
            flat[i] = flat[i] ^ (1 << rng.randrange(bits))
    edit_tensors(ckpt, key, change)
    return f"{key}: code bits flipped", "load"


def scale_value(ckpt, rng):
    key = pick(rng, ckpt, ("scales", "offsets", "in_scale", "out_scale", "salient_scale", "sparse_values"))
    if key is None:
        return None
    factor = rng.choice([-1.0, 0.0, 0.5, 3.0, 100.0])

    def change(t):
        flat = t[key].view(-1)
        i = rng.randrange(flat.numel())
        flat[i] = flat[i] * factor
    edit_tensors(ckpt, key, change)
    return f"{key}: one value times {factor}", "load"


def nonfinite_value(ckpt, rng):
    key = pick(rng, ckpt, ("scales", "offsets", "in_scale", "out_scale", "salient_scale", "weight"))
    if key is None:
        return None
    value = rng.choice([float("nan"), float("inf"), -float("inf")])

    def change(t):
        if t[key].is_floating_point():
            t[key].view(-1)[rng.randrange(t[key].numel())] = value
    edit_tensors(ckpt, key, change)
    return f"{key}: one value {value}", "refuse"


def zero_point_out_of_range(ckpt, rng):
    """One zero point just past its code range (refused); with 8-bit codes every uint8 is a zero point (loads)."""
    key = pick(rng, ckpt, ZERO_POINTS)
    if key is None:
        return None
    meta = packed_modules(ckpt)[key.rpartition(".")[0]]
    bits = meta.get("bits") or meta.get("salient_bits") or 4  # bitplane's salient block is 4-bit
    value = min(2 ** bits + rng.randrange(4), 255)

    def change(t):
        t[key].view(-1)[rng.randrange(t[key].numel())] = value
    edit_tensors(ckpt, key, change)
    return f"{key}: a zero point of {value} ({bits}-bit codes)", "refuse" if value >= 2 ** bits else "load"


def wrong_shape(ckpt, rng):
    key = rng.choice(sorted(shard_of(ckpt)))

    def change(t):
        x = t[key]
        t[key] = x.reshape(-1)[:-1].clone() if x.numel() > 1 else torch.cat([x.reshape(-1), x.reshape(-1)])
    edit_tensors(ckpt, key, change)
    return f"{key}: one element short", "refuse"


def wrong_dtype(ckpt, rng):
    key = rng.choice(sorted(shard_of(ckpt)))

    def change(t):
        x = t[key]
        t[key] = x.to(torch.int64) if x.is_floating_point() else x.to(torch.float32)
    edit_tensors(ckpt, key, change)
    return f"{key}: stored as another dtype", "refuse"


def missing_tensor(ckpt, rng):
    key = rng.choice(sorted(shard_of(ckpt)))
    edit_tensors(ckpt, key, lambda t: t.pop(key))
    index = ckpt / "model.safetensors.index.json"
    if index.exists():  # the index still names it: a stale index; drop it there too half the time
        data = json.loads(index.read_text())
        if rng.random() < 0.5:
            data["weight_map"].pop(key)
        index.write_text(json.dumps(data))
    return f"{key}: removed", "refuse"


def extra_tensor(ckpt, rng):
    owner = rng.choice(sorted(packed_modules(ckpt)))
    key = f"{owner}.{rng.choice(['bogus', 'weight', 'perm', 'offsets'])}"
    anchor = next(k for k in shard_of(ckpt) if k.startswith(owner + "."))
    if key in shard_of(ckpt):
        return None

    def change(t):
        t[key] = torch.zeros(3)
    edit_tensors(ckpt, anchor, change)
    index = ckpt / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"][key] = data["weight_map"][anchor]
        index.write_text(json.dumps(data))
    return f"{key}: added", "refuse"


def truncate_shard(ckpt, rng):
    shard = ckpt / rng.choice(sorted(set(shard_of(ckpt).values())))
    data = shard.read_bytes()
    cut = rng.choice([0, 4, 8, rng.randrange(len(data)), len(data) - 1])
    shard.write_bytes(data[:cut])
    return f"{shard.name}: truncated to {cut} of {len(data)} bytes", "refuse"


def corrupt_header(ckpt, rng):
    shard = ckpt / rng.choice(sorted(set(shard_of(ckpt).values())))
    data = bytearray(shard.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(8, 8 + header_len)] = rng.choice(b'{}[]":,0189x \x00\xff')
    shard.write_bytes(bytes(data))
    return f"{shard.name}: header bytes changed", "any"
