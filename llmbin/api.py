"""The public Python API: quantize, distill, load, evaluate. Each is a door into the stage that does the work;
the CLI (llmbin/cli) calls these and nothing deeper."""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint.reader import load_any, load_checkpoint
from .eval.ppl import evaluate_ppl
from .models.context import max_context
from .recipe import Recipe
from .recipe.result import QuantizedModel
from .recipe.run import run_recipe

__all__ = ["quantize", "distill", "load", "load_any", "evaluate_ppl", "max_context", "QuantizedModel", "Recipe"]


def quantize(model_ref: str, recipe: Recipe, out: str | Path | None = None, overwrite: bool = False,
             resume: bool = False, verbose: bool = True, trust_remote_code: bool = False) -> QuantizedModel:
    """Quantize a model reference (hub id, local directory, .gguf file, bundled name) with a recipe; with `out`,
    write the packed checkpoint there. Finished layers go to OUT's work area as they complete; `resume=True`
    continues an interrupted run. -> QuantizedModel (the fake-quantized model, its results, run statistics)."""
    return run_recipe(model_ref, recipe, out, overwrite, resume, verbose, trust_remote_code)


def distill(checkpoint: str | Path, out: str | Path, teacher: str | None = None, dataset: str | None = None,
            options=None, device: str = "cpu", resume: bool = False, overwrite: bool = False, verbose: bool = True,
            memory_budget_mb: int = 0):
    """Distill a packed checkpoint against its full-precision teacher (from its provenance, or `teacher`) into `out`.

    -> DistillOutcome (model: the trained student; formats; stats; path). See llmbin/distill.
    """
    from .distill.on_checkpoint import distill_checkpoint

    return distill_checkpoint(checkpoint, out, teacher, dataset, options, device, resume, overwrite, verbose,
                              memory_budget_mb)


def load(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None):
    """Load a packed llmbin checkpoint -> (model, tokenizer), every shard validated before anything loads."""
    return load_checkpoint(path, device, dtype)
