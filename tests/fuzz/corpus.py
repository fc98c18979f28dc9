"""Small real packed checkpoints of every format, the material the load fuzzer mutates.

Tiny random Llamas (vocab 512) quantized by the real pipeline with calibration text the model writes itself:
uniform (GPTQ, tied packed embedding/head), bitplane with a sparse correction (PB-LLM sparse, untied packed head),
masked (PB-LLM bitmap), two-plane bitplane with an index permutation (DB-LLM whose results are given a random
channel order before saving), bitplane with a salient mask and 4-bit block (PTQ1.61, untied), and the format
version 1 checkpoint kept in tests/data. Tokenizer files are left out: loading does not need them.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent.parent
CALIBRATION = {"dataset": "selfgen", "nsamples": 4, "seqlen": 24, "seed": 0}
ENTRIES = {  # name: (method, params, tied)
    "gptq-tied": ("gptq", {"bits": 4, "group_size": 32}, True),
    "pbllm-sparse-untied": ("pbllm", {"salient_form": "sparse"}, False),
    "pbllm-bitmap-tied": ("pbllm", {"salient_form": "bitmap"}, True),
    "dbllm-perm-tied": ("dbllm", {}, True),
    "ptq161-untied": ("ptq161", {"epochs": 1, "salient_ratio": 0.1}, False),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt")


def tiny_model_dir(root: Path, tied: bool) -> Path:
    from transformers import AutoTokenizer

    sys.path.insert(0, str(TESTS))
    from conftest import tiny_llama

    from llmbin.models.loading import bundled_path

    path = root / f"tiny-{'tied' if tied else 'untied'}"
    if not (path / "config.json").exists():
        tiny_llama(vocab_size=512, tie_word_embeddings=tied).save_pretrained(path)
        AutoTokenizer.from_pretrained(bundled_path("smollm2-135m")).save_pretrained(path)  # selfgen draws ids < 512
    return path


def build(root: Path) -> dict[str, Path]:
    """name -> checkpoint directory (built once under `root`)."""
    import llmbin
    from llmbin.recipe import Recipe

    root.mkdir(parents=True, exist_ok=True)
    built = {}
    for name, (method, params, tied) in ENTRIES.items():
        out = root / name
        if not (out / "config.json").exists():
            recipe = Recipe.create(method, params, calibration=CALIBRATION)
            qm = llmbin.quantize(str(tiny_model_dir(root, tied)), recipe, verbose=False)
            if name.startswith("dbllm-perm"):
                generator = torch.Generator().manual_seed(0)
                for result in qm.results.values():  # stored as int32 indices: not a salient-mask order
                    result.format.perm = torch.randperm(result.format.in_features, generator=generator).int()
            qm.save(out, overwrite=True)
            for file in TOKENIZER_FILES:
                (out / file).unlink(missing_ok=True)
        built[name] = out
    v1 = root / "format-v1"
    if not v1.exists():
        shutil.copytree(TESTS / "data" / "v1-checkpoint", v1)
    built["format-v1"] = v1
    return built
