"""How tests/data/v1-checkpoint was made: llmbin main at commit 6c8f8db (checkpoint format_version 1, before
issue 17), a tiny random tied Llama (vocab 256) with GPTQ 2-bit g32 on every decoder linear, embeddings
stored float32. `v1-expected.safetensors` holds the in-memory fake-quant model's logits for its `ids`, so a
later llmbin must load the directory and reproduce them.

Run from the repository root: PYTHONPATH=$PWD python tests/data/make_v1_checkpoint.py (it writes tests/data/v1-checkpoint).
It is kept for provenance; rerunning it with a newer llmbin writes a NEWER format, not version 1.
"""
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from llmbin.api import QuantizedModel
from llmbin.methods import get_method
from llmbin.calibrate.pipeline import quantize_model
from llmbin.calibrate.quant_log import QuantLog
from llmbin.recipe import Recipe

IDS = torch.tensor([[1, 20, 30, 42, 7, 99, 123, 5, 250, 17]])


def main(out=Path(__file__).parent / "v1-checkpoint"):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    recipe = Recipe.create("gptq", {"bits": 2, "group_size": 32},
                           calibration={"dataset": "random", "nsamples": 4, "seqlen": 16, "seed": 0})
    windows = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    log = QuantLog(verbose=False)
    results = quantize_model(model, get_method("gptq")(recipe.params), windows, recipe.pipeline, 0, log)
    with torch.no_grad():
        expected = model(IDS).logits
    if out.exists():
        shutil.rmtree(out)
    info = {"recipe": recipe.to_dict(), "provenance": {"model": "tiny random llama", "seed": 0}}
    QuantizedModel(model, None, recipe, results, info, log, {"made": "v1"}).save(out)
    save_file({"logits": expected.contiguous(), "ids": IDS}, str(out.parent / "v1-expected.safetensors"))


if __name__ == "__main__":
    main()
