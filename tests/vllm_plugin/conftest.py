"""vLLM tests: tiny checkpoints of every llmbin format, served by a real vLLM engine on CPU and compared with
llmbin's transformers path (`llmbin.load`), the independent computation.

They run in the vLLM venv (`make vllm`, .venv-vllm: vLLM pins an older transformers than llmbin's own venv) with
`.venv-vllm/bin/python -m pytest tests/vllm_plugin`; the main venv's pytest, which has no vLLM, collects nothing here.
"""
from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; unset, the CPU worker claims most of the RAM
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in the test process: faster, one log
os.environ.setdefault("HF_HUB_OFFLINE", "1")

if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]  # the main venv: these run under .venv-vllm (make test does both)

import gc
from pathlib import Path

import pytest
import torch

TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1)  # head_dim 32: vLLM CPU's least


def calibration(text_file, **extra) -> dict:
    return {"dataset": str(text_file), "nsamples": 4, "seqlen": 64, "seed": 0, **extra}


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """Tiny random models with SmolLM2's tokenizer: a tied Llama, an untied Llama, a Qwen2 with q/k/v biases.
    Initialised at 0.1 (not 0.02) so their next-token distributions are peaked enough for greedy decoding to mean
    something."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    models = {
        "llama": LlamaForCausalLM(LlamaConfig(vocab_size=49152, tie_word_embeddings=True, **TINY)),
        "llama-untied": LlamaForCausalLM(LlamaConfig(vocab_size=49152, tie_word_embeddings=False, **TINY)),
        "qwen2": Qwen2ForCausalLM(Qwen2Config(vocab_size=49152, tie_word_embeddings=True, **TINY)),
    }
    with torch.no_grad():
        for layer in models["qwen2"].model.layers:  # random init leaves biases at zero: make them matter
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    dirs = {}
    for name, model in models.items():
        path = tmp_path_factory.mktemp(name) / name
        model.eval().save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[name] = path
    return dirs


@pytest.fixture(scope="session")
def quantized(tmp_path_factory, tiny_sources, text_file):
    """quantized(name) -> checkpoint directory, made once per session."""
    import llmbin
    from llmbin.recipe import Recipe

    from plugin_checkpoints import CHECKPOINTS, write_bitplane_variants

    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            out = tmp_path_factory.mktemp("ckpt") / name
            if name == "bitplane-variants":
                write_bitplane_variants(tiny_sources["llama"], out)
            else:
                source, method, params, pipeline = CHECKPOINTS[name]
                recipe = Recipe.create(method, params, calibration=calibration(text_file), pipeline=pipeline)
                llmbin.quantize(str(tiny_sources[source]), recipe, out=out, verbose=False)
            made[name] = out
        return made[name]

    return make


@pytest.fixture(scope="session")
def engines():
    """engines(path, **kwargs) -> a vLLM LLM on CPU (float32 and eager unless asked), the last one kept: each test
    uses one engine at a time and a new one frees the old one first."""
    from vllm import LLM

    held: dict = {}

    def engine(path, **kwargs):
        key = (str(path), tuple(sorted(kwargs.items())))
        if held.get("key") != key:
            held.clear()
            gc.collect()
            options = dict(dtype="float32", enforce_eager=True, max_model_len=512, seed=0, max_num_seqs=8)
            held.update(key=key, llm=LLM(model=str(path), **{**options, **kwargs}))
        return held["llm"]

    yield engine
    held.clear()
    gc.collect()
