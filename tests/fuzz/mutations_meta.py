"""Mutations of a checkpoint's JSON (config.json's quantization_config, the shard index) and of where its shards are."""
from __future__ import annotations

import json
import shutil

from mutations import BAD_VALUES, config, shard_of

META_FIELDS = ("out_features", "in_features", "num_planes", "group_size", "k_salient", "sparse_nnz", "bits",
               "salient_bits", "salient_nnz", "paper_bits", "version", "format", "offsets", "perm", "in_scale",
               "out_scale", "perm_storage")
SECTIONS = ("modules", "embeddings")


def edit_config(ckpt, change) -> None:
    data = config(ckpt)
    change(data)
    (ckpt / "config.json").write_text(json.dumps(data))


def module_metas(data: dict) -> list[dict]:
    qc = data["quantization_config"]
    metas = list(qc["modules"].values())
    for role in ("input", "output"):
        entry = (qc.get("embeddings") or {}).get(role)
        if entry and "meta" in entry:
            metas.append(entry["meta"])
    return metas


def meta_field(ckpt, rng):
    chosen = {}

    def change(data):
        meta = rng.choice(module_metas(data))
        field = rng.choice([f for f in META_FIELDS if f in meta])
        value = rng.choice(BAD_VALUES + ["uniform", "bitplane", "masked", "index", "salient_mask", 2, 3, 8, 9, 99])
        if value == meta[field] or (type(value) is type(meta[field]) and field == "paper_bits"):
            value = 10**9  # paper_bits of another size is only a label: change it to something impossible
        meta[field] = value
        chosen.update(field=field, value=value)
    edit_config(ckpt, change)
    return f"metadata {chosen['field']} = {chosen['value']!r}", "refuse"


def meta_delete(ckpt, rng):
    chosen = {}

    def change(data):
        meta = rng.choice(module_metas(data))
        field = rng.choice([f for f in META_FIELDS if f in meta and f != "perm_storage"])
        del meta[field]
        chosen["field"] = field
    edit_config(ckpt, change)
    return f"metadata {chosen['field']} deleted", "refuse"


def huge_dimension(ckpt, rng):
    def change(data):
        meta = rng.choice(module_metas(data))
        meta[rng.choice(["out_features", "in_features"])] = rng.choice([2**31, 10**12, 2**62])
    edit_config(ckpt, change)
    return "a module declared with a huge dimension", "refuse"


def quant_config_shape(ckpt, rng):
    kind = rng.choice(["modules_list", "modules_null", "version", "embeddings_garbage", "rename", "swap", "no_section"])

    def change(data):
        qc = data["quantization_config"]
        if kind == "modules_list":
            qc["modules"] = list(qc["modules"].values())
        elif kind == "modules_null":
            qc["modules"] = None
        elif kind == "version":
            qc["format_version"] = rng.choice([0, 3, 99, "2", None])
        elif kind == "embeddings_garbage":
            qc["embeddings"] = rng.choice([[], "int5", {"input": {"module": 3}}, {"output": {"module": "lm_head"}},
                                           {"input": {"module": "model.nope", "meta": {"format": "uniform"}}}])
        elif kind == "rename":
            name = rng.choice(sorted(qc["modules"]))
            qc["modules"][name.replace("layers.0", "layers.7").replace("layers.1", "layers.9") + "_x"] = \
                qc["modules"].pop(name)
        elif kind == "swap":  # two modules of different shapes trade metadata
            names = sorted(qc["modules"], key=lambda n: (qc["modules"][n]["out_features"], n))
            a, b = names[0], names[-1]
            qc["modules"][a], qc["modules"][b] = qc["modules"][b], qc["modules"][a]
        else:
            del data["quantization_config"]
    edit_config(ckpt, change)
    return f"quantization_config: {kind}", "refuse"


def broken_json(ckpt, rng):
    target = rng.choice(["config.json", "model.safetensors.index.json"])
    path = ckpt / target
    if not path.exists():
        return None
    text = path.read_text()
    path.write_text(rng.choice([text[: rng.randrange(len(text))], text.replace('"', "'", 1), "[]", "null", ""]))
    return f"{target}: not the JSON it was", "refuse"


def shard_escape(ckpt, rng):
    """The index names a shard outside the directory; a valid copy waits there, so reading it would load."""
    index = ckpt / "model.safetensors.index.json"
    if not index.exists():
        return None
    data = json.loads(index.read_text())
    victim = rng.choice(sorted(set(data["weight_map"].values())))
    outside = ckpt.parent / f"outside-{ckpt.name}"
    outside.mkdir(exist_ok=True)
    shutil.copy(ckpt / victim, outside / victim)
    (ckpt / "sub").mkdir(exist_ok=True)
    shutil.copy(ckpt / victim, ckpt / "sub" / victim)
    name = rng.choice([f"../{outside.name}/{victim}", str((outside / victim).resolve()), f"sub/{victim}",
                       f"sub/../../{outside.name}/{victim}", f"./{victim}"])
    data["weight_map"] = {k: (name if v == victim else v) for k, v in data["weight_map"].items()}
    index.write_text(json.dumps(data))
    return f"index names shard {name!r}", "refuse!"


def base_tensor_shape(ckpt, rng):
    from mutations import edit_tensors

    keys = sorted(k for k in shard_of(ckpt) if k.endswith("norm.weight"))
    if not keys:
        return None
    key = rng.choice(keys)
    edit_tensors(ckpt, key, lambda t: t.__setitem__(key, t[key][:-1].clone()))
    return f"{key}: a norm one element short", "refuse"
