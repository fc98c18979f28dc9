"""Bad checkpoints stop vLLM with llmbin's one-line error naming the problem, before any product runs; layers
that cannot be split over tensor-parallel ranks are refused with one line naming pipeline parallelism."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmbin.errors import LlmbinError

K_PLANES = "model.layers.0.self_attn.k_proj.planes"


def corrupt(src, dst, tensors=None, config=None):
    shutil.copytree(src, dst)
    if tensors:
        shard = dst / "layer-00000.safetensors"
        found = load_file(shard)
        tensors(found)
        save_file(found, shard, metadata={"format": "pt"})
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        config(cfg["quantization_config"])
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def llmbin_error(excinfo) -> str:
    """The LlmbinError vLLM's engine start-up raised or re-raised, as its one line. A config vLLM validates with
    pydantic (from_config) comes back inside pydantic's error, as that error's "Value error, ..." line."""
    error = excinfo.value
    while error is not None and not isinstance(error, LlmbinError):
        error = error.__cause__ or error.__context__
    if error is None:
        lines = [line for line in str(excinfo.value).splitlines() if line.strip().startswith("Value error, ")]
        assert lines, f"no LlmbinError behind {excinfo.value!r}"
        return lines[0].strip().removeprefix("Value error, ")
    message = str(error)
    assert "\n" not in message
    return message


def truncate(found):
    found[K_PLANES] = found[K_PLANES][..., :-1].contiguous()


def flip_salient_bit(found):
    mask = "model.layers.0.self_attn.k_proj.salient_mask"
    found[mask][0] ^= 1  # the first channel changes side: the popcount no longer matches k_salient


CASES = {
    "missing": (dict(tensors=lambda found: found.pop(K_PLANES)), f"checkpoint is missing packed tensor {K_PLANES}"),
    "shape": (dict(tensors=truncate), f"packed tensor {K_PLANES} is int32 .*, the format needs int32"),
    "values": (dict(tensors=flip_salient_bit), "salient_mask marks .* channels, the layer has .* salient ones"),
    "version": (dict(config=lambda qc: qc["modules"]["model.layers.0.mlp.up_proj"].update(version=7)),
                "format bitplane version 7 is not supported"),
    "half-fused": (dict(config=lambda qc: qc["modules"].pop("model.layers.1.self_attn.v_proj")),
                   "vLLM fuses .* into model.layers.1.self_attn.qkv_proj, but the checkpoint packs only"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_checkpoint_one_line(case, quantized, engines, tmp_path):
    edits, expected = CASES[case]
    bad = corrupt(quantized("ptq161"), tmp_path / case, **edits)
    with pytest.raises(Exception) as excinfo:
        engines(bad)
    message = llmbin_error(excinfo)
    assert re.search(expected, message), message


def test_unsplittable_layer_refused_naming_pipeline_parallelism():
    from llmbin.integrations.vllm.shards import Shard
    from plugin_checkpoints import VARIANTS, bitplane_variant

    permuted_groups = bitplane_variant(torch.randn(64, 128), VARIANTS[5], seed=0)  # 2 planes, groups of 16, perm
    shard = Shard("model.layers.0.self_attn.o_proj", permuted_groups.meta(), (0, 64), (64, 128))
    with pytest.raises(LlmbinError, match="cannot be split over tensor-parallel ranks: its input channels are "
                                          "permuted across several groups.*pipeline parallelism"):
        shard.check_split("model.layers.0.self_attn.o_proj")
