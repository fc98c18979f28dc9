"""Calibration/evaluation data: seeded windows, local file kinds, self-generated text."""
import json

import pytest
import torch

from llmbin.data import calibration_windows, evaluation_windows, load_text, token_stream
from llmbin.data.selfgen import generate_windows
from llmbin.errors import LlmbinError


def test_windows_follow_the_reference_sampler():
    import random

    ids = torch.arange(1000)
    w = calibration_windows(ids, 5, 64, seed=3)
    rng = random.Random(3)
    starts = [rng.randint(0, 1000 - 64 - 1) for _ in range(5)]
    assert w.tolist() == [list(range(s, s + 64)) for s in starts]
    assert torch.equal(calibration_windows(ids, 5, 64, seed=3), w)
    assert evaluation_windows(ids, 300).shape == (3, 300) and evaluation_windows(ids, 100, 2).shape == (2, 100)
    with pytest.raises(LlmbinError, match="fewer than one window"):
        calibration_windows(ids[:50], 1, 64, seed=0)


def test_local_file_kinds(tmp_path):
    (tmp_path / "a.txt").write_text("plain text")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["x", "y"]}), tmp_path / "c.parquet")
    assert load_text(str(tmp_path / "a.txt")) == "plain text"
    assert load_text(str(tmp_path / "b.jsonl")) == "one\n\ntwo"
    assert load_text(str(tmp_path / "c.parquet")) == "x\n\ny"
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(LlmbinError, match="bad.jsonl:1: not a JSON object"):
        load_text(str(tmp_path / "bad.jsonl"))
    with pytest.raises(LlmbinError, match="neither a file nor one of"):
        load_text("no-such-dataset")


def test_selfgen_is_seeded(tokenizer):
    from conftest import tiny_llama

    model = tiny_llama()
    a = generate_windows(model, tokenizer, nsamples=3, seqlen=12, seed=5, batch_size=2)
    b = generate_windows(model, tokenizer, nsamples=3, seqlen=12, seed=5, batch_size=2)
    assert a.shape == (3, 12) and torch.equal(a, b)
    assert not torch.equal(a, generate_windows(model, tokenizer, nsamples=3, seqlen=12, seed=6, batch_size=2))
    assert token_stream(tokenizer, "Hello world").tolist() == tokenizer("Hello world", add_special_tokens=False).input_ids
