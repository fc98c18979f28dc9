"""The output's work area: finished layers are written here as they complete, and it becomes the checkpoint.

`.{OUT}.partial/` beside OUT holds one safetensors shard per finished decoder layer (its tensors in
final, packed form) and `manifest.json` with the run's fingerprint (hashes of model config, recipe,
model revision and calibration token ids) and each layer's file hash. `--resume` checks the
fingerprint and the hashes, then skips finished layers. At the end the base shard, index, config,
tokenizer and model card are added and the directory is renamed to OUT in one step, so a killed run
never leaves a directory whose config.json looks complete.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import LlmbinError
from ..formats import format_from_meta
from ..host.files import (atomic_path, atomic_write_text, disk_full_as_error, publish_directory, remove_stale_temp_files,
                          sha256_file)
from ..methods.base import QuantResult
from .storage_dtype import storage_tensor

MANIFEST = "manifest.json"
WORKAREA_VERSION = 1


class WorkArea:
    def __init__(self, out: str | Path, fingerprint: dict, resume: bool = False, overwrite: bool = False,
                 storage_dtype: torch.dtype | None = None):
        self.out = Path(out)
        self.storage_dtype = storage_dtype  # unquantized floating tensors are written in it (storage_dtype.py)
        self.path = self.out.parent / f".{self.out.name}.partial"
        self.fingerprint = fingerprint
        if self.out.exists() and not overwrite:
            raise LlmbinError(f"{self.out} already exists; choose another -o or pass --overwrite")
        if self.path.exists():
            if not resume:
                raise LlmbinError(f"an interrupted run left {self.path}; pass --resume to continue it, "
                                  f"or delete that directory to start over")
            remove_stale_temp_files(self.path)  # a killed run's half-written layer
            self.manifest = self._verified_manifest()
        else:
            if resume:
                raise LlmbinError(f"--resume: nothing to resume, {self.path} does not exist")
            self.path.mkdir(parents=True)
            self.manifest = {"version": WORKAREA_VERSION, "fingerprint": fingerprint, "layers": {}}
            self._write_manifest()

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def sub_area(self, name: str) -> "WorkArea":
        """A work area of its own inside this one (a method's earlier pass), resumed when it exists."""
        return WorkArea(self.path / name, self.fingerprint, resume=(self.path / f".{name}.partial").exists())

    def _verified_manifest(self) -> dict:
        try:
            manifest = json.loads((self.path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError):
            raise LlmbinError(f"cannot resume: {self.path / MANIFEST} is missing or corrupted; delete {self.path}") from None
        old = manifest.get("fingerprint", {})
        differs = sorted(k for k in set(old) | set(self.fingerprint) if old.get(k) != self.fingerprint.get(k))
        if differs:
            raise LlmbinError(f"cannot resume {self.path}: the {', '.join(differs)} differ(s) from the interrupted run; "
                              "rerun with the same model, recipe and calibration data, or delete the directory")
        for index, entry in list(manifest["layers"].items()):
            file = self.path / entry["file"]
            if not file.exists() or sha256_file(file) != entry["sha256"]:
                del manifest["layers"][index]  # half-written or damaged: quantize that layer again
        return manifest

    def _write_manifest(self) -> None:
        atomic_write_text(self.path / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True))

    @property
    def finished(self) -> set[int]:
        return {int(i) for i in self.manifest["layers"]}

    def save_layer(self, index: int, prefix: str, layer: torch.nn.Module, results: dict[str, QuantResult]) -> None:
        """Write every tensor of decoder layer `index` in final form: packed for quantized linears."""
        tensors, modules = {}, {}
        for key, value in layer.state_dict().items():
            module = key.rsplit(".", 1)[0]
            if module in results and key.endswith(".weight"):
                continue
            tensors[f"{prefix}.{key}"] = storage_tensor(value.detach().cpu(), self.storage_dtype).contiguous()
        for name, result in results.items():
            modules[f"{prefix}.{name}"] = result.format.meta()
            for tname, t in result.format.tensors().items():
                tensors[f"{prefix}.{name}.{tname}"] = t.cpu().contiguous()
        file = f"layer-{index:05d}.safetensors"
        with atomic_path(self.path / file) as tmp:
            # one metadata key only: safetensors does not keep the order of several, and reruns must be byte-identical
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        self.manifest["layers"][str(index)] = {
            "file": file, "sha256": sha256_file(self.path / file), "modules": modules,
            "metrics": {f"{prefix}.{n}": r.metrics for n, r in results.items()}}
        self._write_manifest()

    def load_layer(self, index: int, prefix: str) -> dict[str, QuantResult]:
        """-> {name relative to the layer: QuantResult} of a finished layer."""
        entry = self.manifest["layers"][str(index)]
        with safe_open(str(self.path / entry["file"]), framework="pt") as f:
            results = {}
            for full, meta in entry["modules"].items():
                cls = format_from_meta(meta)
                tensors = {t: f.get_tensor(f"{full}.{t}") for t in cls.expected_tensors(meta)}
                results[full[len(prefix) + 1:]] = QuantResult(cls.from_tensors(meta, tensors),
                                                              entry["metrics"].get(full, {}))
        return results

    def finalize(self, model, layers_prefix: str, quant_config: dict, tokenizer, log_jsonl: str, card,
                 overwrite: bool, packed: set[str] = frozenset()) -> Path:
        """Add base tensors, index, config, tokenizer, log and card; rename into place.

        `card` is the README text, or a function of the work area's path (it may read the finished shards);
        tensors of the `packed` modules (packed embeddings, head) keep their format's dtypes.
        """
        with disk_full_as_error(self.path):
            return self._finalize(model, layers_prefix, quant_config, tokenizer, log_jsonl, card, overwrite, packed)

    def _finalize(self, model, layers_prefix, quant_config, tokenizer, log_jsonl, card, overwrite, packed) -> Path:
        base, seen = {}, set()
        for key, value in model.state_dict().items():
            if key.startswith(layers_prefix + ".") or value.device.type == "meta":
                continue
            ptr = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
            if ptr in seen:  # tied weights (lm_head = embeddings) are stored once
                continue
            seen.add(ptr)
            value = value.detach().cpu()
            keep = key.rpartition(".")[0] in packed and not key.endswith(".bias")
            base[key] = (value if keep else storage_tensor(value, self.storage_dtype)).contiguous()
        with atomic_path(self.path / "base.safetensors") as tmp:
            save_file(base, str(tmp), metadata={"format": "pt"})
        weight_map = {k: "base.safetensors" for k in base}
        total = sum(t.numel() * t.element_size() for t in base.values())
        for entry in sorted(self.manifest["layers"].values(), key=lambda e: e["file"]):
            with safe_open(str(self.path / entry["file"]), framework="pt") as f:
                for key in f.keys():
                    weight_map[key] = entry["file"]
                    sl = f.get_slice(key)
                    total += _nbytes(sl.get_dtype(), sl.get_shape())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_text(self.path / "model.safetensors.index.json", json.dumps(index, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(self.path)
        if getattr(model, "generation_config", None) is not None and model.can_generate():
            model.generation_config.save_pretrained(self.path)
        (self.path / "quant_log.jsonl").write_text(log_jsonl)
        (self.path / "README.md").write_text(card(self.path) if callable(card) else card)
        config = model.config.to_dict()
        config["quantization_config"] = quant_config
        atomic_write_text(self.path / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
        if self.out.exists():
            if not overwrite:
                raise LlmbinError(f"{self.out} already exists; choose another -o or pass --overwrite")
            shutil.rmtree(self.out)
        publish_directory(self.path, self.out)
        return self.out


_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _nbytes(dtype: str, shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n * _SIZES[dtype]
