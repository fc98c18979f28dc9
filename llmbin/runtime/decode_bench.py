"""End-to-end decode and prefill speed: a packed checkpoint vs the float32 and bfloat16 model it was made from.

Each model decodes the same prompt for exactly `new_tokens` tokens (EOS ignored) two ways:
- `hf-generate`: transformers' generate (dynamic cache), greedy: what a user of HF gets;
- `static-compiled` / `static-eager`: llmbin's Decoder (static cache; the step compiled for packed
  models, eager for float ones; a float32 head on CPU picks the greedy token through ScreenedHead;
  as `llmbin generate` does), greedy; the first compiled step (tracing + code generation, cached on
  disk) is reported as compile_s and not timed.
Prefill tokens/s = prompt tokens / time to the first new token; decode tokens/s = the new tokens
after the first / the time they took. A streamer timestamps HF's tokens, so both ways are measured
alike. Prefill at 64 and 512 prompt tokens (llama-bench's pp64/pp512) is measured by prefill_bench.py.
Every row carries the thread count and the load average before and after it ran.
"""
from __future__ import annotations

import gc
import os
import time

import torch

from ..checkpoint.reader import load_checkpoint, read_quant_config
from ..errors import LlmbinError
from ..models.loading import load_model
from .decoder import Decoder, DecodeStats
from .prefill_bench import prefill_rows
from .sampling import Sampler

PROMPT = "The history of the city begins"
PATHS = ("hf-generate", "static")


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


class _Clock:
    """A transformers streamer that records when the prompt and each new token arrive."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


@torch.inference_mode()
def hf_generate_speed(model, ids: torch.Tensor, new_tokens: int) -> tuple[dict, list[int]]:
    kwargs = dict(do_sample=False, pad_token_id=0, min_new_tokens=new_tokens, max_new_tokens=new_tokens)
    model.generate(ids, **{**kwargs, "min_new_tokens": 4, "max_new_tokens": 4})  # repacks every layer once
    clock = _Clock()
    start = time.perf_counter()
    out = model.generate(ids, streamer=clock, **kwargs)
    t = clock.times  # [prompt, token 1, ..., token n]
    n = out.shape[1] - ids.shape[1]
    return ({"prefill_tokens_per_s": ids.shape[1] / (t[1] - start), "decode_tokens_per_s": (n - 1) / (t[-1] - t[1]),
             "compile_s": None}, out[0, ids.shape[1]:].tolist())


def static_speed(model, ids: torch.Tensor, new_tokens: int, compile: bool | None = None,
                 decoder: Decoder | None = None) -> tuple[dict, list[int]]:
    """One greedy decode; pass the same `decoder` to time several without compiling the step again."""
    decoder = decoder or Decoder(model, ids.shape[1] + new_tokens, compile=compile)
    stats = DecodeStats()
    tokens = list(decoder.stream(ids, new_tokens, Sampler(), frozenset(), stats))
    return ({"prefill_tokens_per_s": stats.prefill_tokens_per_s, "decode_tokens_per_s": stats.decode_tokens_per_s,
             "compile_s": round(stats.compile_s, 1), "mode": stats.mode, "head": stats.head,
             "decode_threads": stats.decode_threads}, tokens)


def decode_rows(label: str, model, tokenizer, new_tokens: int = 128, prompt: str = PROMPT, paths=PATHS) -> list[dict]:
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    rows, tokens = [], {}
    for path in paths:
        load_start = _load()
        fn = hf_generate_speed if path == "hf-generate" else static_speed
        speed, tokens[path] = fn(model, ids, new_tokens)
        speed.setdefault("head", "float")
        speed.setdefault("decode_threads", torch.get_num_threads())
        if path == "static":
            path = f"static-{speed.pop('mode')}"
        rows.append({"model": label, "path": path, **{k: (round(v, 2) if isinstance(v, float) else v)
                                                      for k, v in speed.items()},
                     "prompt_tokens": ids.shape[1], "new_tokens": new_tokens, "threads": torch.get_num_threads(),
                     "loadavg_start": load_start, "loadavg_end": _load(), "prompt": prompt})
    if len(tokens) > 1:
        same = len({tuple(v) for v in tokens.values()}) == 1
        for r in rows:
            r["greedy_tokens_agree"] = same
    return rows


def run_decode_bench(path, new_tokens: int = 128, prompt: str = PROMPT, device: str = "cpu", log=print) -> list[dict]:
    """Rows for the packed checkpoint at `path` and its source model in float32 and bfloat16 (fp16 on CUDA)."""
    source = read_quant_config(path).get("provenance", {}).get("model")
    if not source:
        raise LlmbinError(f"{path} does not record the model it was quantized from (provenance.model)")
    low = torch.float16 if device.startswith("cuda") else torch.bfloat16
    packed_dtype = torch.float16 if device.startswith("cuda") else torch.float32
    loaders = [("packed", lambda: load_checkpoint(path, device, packed_dtype)),
               ("float32", lambda: load_model(source, device, torch.float32)),
               (str(low).removeprefix("torch."), lambda: load_model(source, device, low))]
    rows = []
    for label, loader in loaders:
        model, tokenizer = loader()
        model.to(device)
        first = not rows
        added = decode_rows(label, model.eval(), tokenizer, new_tokens, prompt) + prefill_rows(label, model)
        rows += added
        if log:
            log(format_decode(added, header=first))
        del model
        gc.collect()
    base = next((r["decode_tokens_per_s"] for r in rows if r["model"] == "float32" and r["path"] == "hf-generate"), None)
    for r in rows:
        if "decode_tokens_per_s" in r:
            r["speedup_vs_float32_hf"] = round(r["decode_tokens_per_s"] / base, 2) if base else None
    for r in rows:  # prefill against the float32 model's at the same prompt length
        fp = next((f["prefill_tokens_per_s"] for f in rows if f["model"] == "float32" and f["path"] == r["path"]), None)
        if r["path"].startswith("prefill") and fp:
            r["prefill_speedup_vs_float32"] = round(r["prefill_tokens_per_s"] / fp, 2)
    return rows


DECODE_COLS = ["model", "path", "head", "prompt_tokens", "prefill_tokens_per_s", "decode_tokens_per_s", "speedup_vs_float32_hf",
               "prefill_speedup_vs_float32", "compile_s", "threads", "decode_threads", "loadavg_start", "loadavg_end",
               "greedy_tokens_agree"]


def format_decode(rows: list[dict], header: bool = True) -> str:
    lines = ["| " + " | ".join(DECODE_COLS) + " |", "|" + "---|" * len(DECODE_COLS)] if header else []
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in DECODE_COLS) + " |" for r in rows]
    return "\n".join(lines)
