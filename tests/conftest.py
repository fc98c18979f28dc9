"""Shared fixtures: real tokenizer and text, tiny random models built from configs."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# packed models are compared with their fake-quant float models at 1e-5: the float32 kernel paths; the bf16 GEMM and
# int16-activation paths are held to their own stated bounds (test_kernels_cpu_gemm.py unsets this)
os.environ.setdefault("LLMBIN_CPU_EXACT", "1")

if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"  # kernels run in triton's CPU interpreter
    except ImportError:
        pass

import inspect as _inspect
from pathlib import Path

import pytest
import torch

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def english_text() -> str:
    """Real English prose available offline: the documentation of Python's standard library modules."""
    import argparse, collections, email, functools, http.client, json, logging, pathlib, subprocess, threading, unittest, zipfile  # noqa: E401,E501

    docs = []
    for mod in (argparse, collections, email, functools, http.client, json, logging, pathlib, subprocess, threading,
                unittest, zipfile):
        docs.append(_inspect.getdoc(mod) or "")
        for _, obj in _inspect.getmembers(mod):
            if (_inspect.isclass(obj) or _inspect.isfunction(obj)) and getattr(obj, "__module__", "") == mod.__name__:
                docs.append(_inspect.getdoc(obj) or "")
    return "\n\n".join(d for d in docs if d)


@pytest.fixture(scope="session")
def ext():
    """The native CPU extension (built on first use): a test that needs it fails, saying why, if it cannot build."""
    from llmbin.kernels import cpu

    built = cpu.load_extension()
    assert built is not None, cpu.build_error()
    return built


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "english.txt"
    path.write_text(english_text())
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from llmbin.models.loading import bundled_path

    return bundled_path("smollm2-135m")


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def tiny_llama(vocab_size: int = 49152, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=256,
                         **{"tie_word_embeddings": True, **TINY, **overrides})
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama with SmolLM2's real tokenizer, saved as an ordinary HF directory."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model = tiny_llama()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_packed(model, results: dict, path, **config) -> None:
    """Pack a pipeline-quantized model in place and save it as transformers does (no llmbin checkpoint writer)."""
    from llmbin.checkpoint.writer import pack_model

    pack_model(model, results)
    model.config.quantization_config = {"quant_method": "llmbin", "format_version": config.pop("format_version", 1),
                                        "modules": {n: r.format.meta() for n, r in results.items()}, **config}
    model.save_pretrained(path)


def rtn_matrix(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """[out, in] rounded to nearest, asymmetric min-max per group of `group` input columns (zero in range): a plain
    baseline written here, independent of llmbin's quantizers."""
    levels = 2 ** bits - 1
    k = w.shape[-1]
    pad = (-k) % group
    g = torch.nn.functional.pad(w.float(), (0, pad)).reshape(w.shape[0], -1, group)
    valid = torch.arange(g.shape[1] * group).reshape(g.shape[1], group) < k
    lo = torch.where(valid, g, torch.inf).amin(-1, keepdim=True).clamp(max=0)
    hi = torch.where(valid, g, -torch.inf).amax(-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / levels).clamp(min=1e-8)
    zero = torch.round(-lo / scale)
    q = (torch.clamp(torch.round(g / scale) + zero, 0, levels) - zero) * scale
    return q.reshape(w.shape[0], -1)[:, :k].to(w.dtype)


def rtn_reference(model, bits: int, group: int):
    """A copy of `model` with every decoder weight matrix through rtn_matrix. Linear weights are [out, in], GPT-2's
    Conv1D [in, out], fused MoE experts [experts, out, in]."""
    import copy

    from llmbin.models.walk import decoder_layers

    reference = copy.deepcopy(model)
    _, layers = decoder_layers(reference)
    with torch.no_grad():
        for name, param in layers.named_parameters():
            if param.dim() < 2 or "norm" in name or "router" in name or name.endswith("gate.weight"):
                continue
            conv = type(layers.get_submodule(name.rpartition(".")[0])).__name__ == "Conv1D"
            w = param.data.transpose(-1, -2) if conv else param.data
            rows = w.reshape(-1, w.shape[-1])
            w.copy_(rtn_matrix(rows, bits, group).reshape(w.shape))
    return reference
