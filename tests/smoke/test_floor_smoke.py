"""The smoke suite `make test` also runs on the oldest versions pyproject.toml admits (.venv-floor): a tiny model
quantized, saved and loaded, its packed logits equal to the in-memory model's, and llmbin's greedy decode equal to
transformers' own generate on the loaded model."""
from __future__ import annotations

import pytest
import torch
import transformers

import llmbin
from llmbin.recipe import Recipe
from llmbin.runtime.decoder import Decoder
from llmbin.runtime.sampling import Sampler

IDS = torch.tensor([[1, 200, 3000, 42, 7, 99, 1234, 5]])


@pytest.mark.parametrize("method,params", [("gptq", {"bits": 4, "group_size": 32}),
                                           ("ptq161", {"epochs": 1, "salient_ratio": 0.1, "preprocess": {"enabled": False}})])
def test_quantize_save_load_generate(method, params, tiny_llama_dir, text_file, tmp_path):
    recipe = Recipe.create(method, params, calibration={"dataset": str(text_file), "nsamples": 4, "seqlen": 32})
    qm = llmbin.quantize(str(tiny_llama_dir), recipe, out=tmp_path / "q", verbose=False)
    with torch.no_grad():
        fake = qm.model(IDS).logits
    model, _ = llmbin.load(tmp_path / "q")
    with torch.no_grad():
        packed = model(IDS).logits
    assert (packed - fake).abs().max() <= 1e-3 * fake.abs().max()
    with torch.inference_mode():
        reference = model.generate(IDS, do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=0)
    sampler = RecordingSampler()
    ours = list(Decoder(model, IDS.shape[1] + 8, compile=False, screened_head=False).stream(IDS, 8, sampler))
    assert ours == reference[0, IDS.shape[1]:].tolist(), f"transformers {transformers.__version__}"
    # every step's logits (KV cache) equal the uncached forward of the whole sequence at that position
    with torch.no_grad():
        full = model(torch.cat([IDS, torch.tensor([ours[:-1]])], 1)).logits[0, IDS.shape[1] - 1:]
    for step, logits in enumerate(sampler.seen):
        assert (logits - full[step]).abs().max() <= 1e-4 * full[step].abs().max(), f"step {step}"


class RecordingSampler(Sampler):
    """Greedy, keeping the logits of every step."""

    def __post_init__(self):
        super().__post_init__()
        self.seen = []

    def __call__(self, logits):
        self.seen.append(logits.float().reshape(-1).clone())
        return super().__call__(logits)
