"""What a recipe's run gives back: the fake-quantized model in memory, its packed results, and how to save them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..calibrate.quant_log import QuantLog
from ..checkpoint.storage_dtype import NAMES
from ..checkpoint.workarea import WorkArea
from ..checkpoint.writer import write_checkpoint
from ..methods.base import QuantResult
from .recipe import Recipe


@dataclass
class QuantizedModel:
    model: torch.nn.Module
    tokenizer: object
    recipe: Recipe
    results: dict[str, QuantResult]
    info: dict = field(default_factory=dict)  # goes into quantization_config (deterministic: no timings)
    log: QuantLog | None = None
    fingerprint: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # wall time, peak RSS of the run

    def save(self, out: str | Path, overwrite: bool = False, work=None, rewrite_layers: bool = False) -> Path:
        work = work or WorkArea(out, self.fingerprint, overwrite=overwrite,
                                storage_dtype=NAMES.get(self.info.get("storage_dtype")))
        return write_checkpoint(self.model, self.tokenizer, self.results, work, self.info,
                                self.log.jsonl() if self.log else "", overwrite, rewrite_layers)
