"""Static-cache decode (eager and compiled) against HF generate, per kernel backend; `llmbin generate` inputs."""
from __future__ import annotations

import shutil

import collections
import math

import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_llama
from conftest_kernels import make_format, random_uniform
from llmbin.cli import main
from llmbin.runtime.decoder import Decoder, DecodeStats
from llmbin.runtime.fused_products import FuseSharedInputProducts
from llmbin.runtime.prompt import TextStream
from llmbin.runtime.sampling import Sampler
from llmbin.nn import QuantLinear

PROMPT = "The history of the city begins with"
NEW = 12


def packed_tiny_llama(seed: int = 0, layers: str = "ptq161", **overrides):
    """Tiny Llama whose every decoder linear is a random PTQ1.61-shaped bit-plane layer (salient block, perm, r2),
    or with layers="uniform" a random 4-bit GPTQ-shaped one (group 32, zero points)."""
    model = tiny_llama(seed=seed, **overrides)
    for i, (name, lin) in enumerate([(n, m) for n, m in model.named_modules()
                                     if isinstance(m, torch.nn.Linear) and ".layers." in n]):
        fmt = (make_format(lin.out_features, lin.in_features, 32, 1, "ptq161", seed=seed * 100 + i) if layers == "ptq161"
               else random_uniform(lin.out_features, lin.in_features, 4, 32, seed=seed * 100 + i))
        parent = model.get_submodule(name.rsplit(".", 1)[0])
        setattr(parent, name.rsplit(".", 1)[1], QuantLinear.from_format(fmt))
    return model.eval()


def hf_greedy(model, ids: torch.Tensor, new: int) -> list[int]:
    out = model.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def decode(model, ids, compile: bool, new: int = NEW, screened_head: bool = True) -> tuple[list[int], str]:
    decoder = Decoder(model, ids.shape[1] + new, compile=compile, screened_head=screened_head)
    stats = DecodeStats()
    tokens = list(decoder.stream(ids, new, Sampler(), {model.generation_config.eos_token_id}, stats))
    assert stats.head == ("screened" if screened_head else "float")
    return tokens, decoder.mode


def backends_on_cpu():
    out = ["torch"]
    if shutil.which("c++") or shutil.which("g++"):
        out.append("cpu")
    return out


@pytest.mark.parametrize("backend,layers", [(b, "ptq161") for b in backends_on_cpu()] +
                         ([("cpu", "uniform")] if "cpu" in backends_on_cpu() else []))
def test_compiled_static_decode_matches_eager_and_hf_generate(backend, layers, tokenizer, monkeypatch):
    """uniform: the integer-code kernel (LLMBIN_CPU_EXACT=0), whose q/k/v and gate/up products the compiled step
    makes one call each (runtime/fused_products.py): the same tokens as the eager step's single calls."""
    monkeypatch.setenv("LLMBIN_BACKEND", backend)
    monkeypatch.setenv("LLMBIN_CPU_EXACT", "0" if layers == "uniform" else "1")
    model = packed_tiny_llama(layers=layers)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        reference = hf_greedy(model, ids, NEW)  # HF's own loop: dynamic cache, its own argmax
        assert {type(m._prepared[(torch.device("cpu"), torch.float32)][0]).__name__
                for m in model.modules() if isinstance(m, QuantLinear)} == {f"{backend.capitalize()}Backend"}
    fused = FuseSharedInputProducts.groups_fused
    for screened in (True, False):  # the token from ScreenedHead, or from the full float32 logits
        eager, mode = decode(model, ids, compile=False, screened_head=screened)
        assert mode == "eager" and eager == reference
        with torch._inductor.config.patch(fx_graph_cache=False):  # compiled here: the fusion pass runs
            compiled, mode = decode(model, ids, compile=True, screened_head=screened)
        assert mode == "compiled", "the step fell back to eager"
        assert compiled == eager
    # q/k/v and gate/up of every layer, in both compiled steps (bit-plane layers are grouped too: run one by one)
    assert FuseSharedInputProducts.groups_fused - fused == (2 * 2 * model.config.num_hidden_layers
                                                            if backend == "cpu" else 0)


def test_each_decoder_compiles_a_guard_free_step_of_its_own(tokenizer):
    """The compiled step keeps no guards, so a Decoder must never find another Decoder's graph: two models of
    different widths, compiled in one process and decoded in turn, each give their own eager tokens."""
    narrow = packed_tiny_llama(seed=2)
    wide = packed_tiny_llama(seed=3, hidden_size=128, intermediate_size=160)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    models = {"narrow": narrow, "wide": wide}
    eager = {name: list(Decoder(model, ids.shape[1] + 6, compile=False).stream(ids, 6, Sampler()))
             for name, model in models.items()}
    assert eager["narrow"] != eager["wide"]  # else a swapped graph would go unseen
    decoders = {name: Decoder(model, ids.shape[1] + 6, compile=True) for name, model in models.items()}
    for name in ("narrow", "wide", "narrow"):
        tokens = list(decoders[name].stream(ids, 6, Sampler()))
        assert decoders[name].mode == "compiled" and tokens == eager[name], name


@pytest.mark.slow  # about a minute: the interpreted kernels run inside the compiled step
def test_triton_backend_compiles_into_the_step_under_the_interpreter(tokenizer, monkeypatch):
    pytest.importorskip("triton")
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("a CUDA machine runs the triton backend natively (test_kernels_triton)")
    from llmbin.kernels import BACKENDS, load_optional_backends

    load_optional_backends()
    monkeypatch.setattr(type(BACKENDS["triton"]), "supports", lambda self, meta, device, dtype: None)
    monkeypatch.setenv("LLMBIN_BACKEND", "triton")
    # one layer, 3 prompt and 3 new tokens: each kernel call costs ~0.2 s in the interpreter
    model = packed_tiny_llama(seed=1, num_hidden_layers=1)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids[:, :3]
    with torch.inference_mode():
        reference = hf_greedy(model, ids, 3)
    eager, _ = decode(model, ids, compile=False, new=3)
    compiled, mode = decode(model, ids, compile=True, new=3)
    assert eager == reference and mode == "compiled" and compiled == eager


def test_compile_failure_falls_back_loudly(tokenizer, monkeypatch):
    model = packed_tiny_llama()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    eager, _ = decode(model, ids, compile=False, new=4)
    lines = []

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler for inductor")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    decoder = Decoder(model, ids.shape[1] + 4, compile=True, log=lines.append)
    tokens = list(decoder.stream(ids, 4, Sampler()))
    assert tokens == eager and decoder.mode == "eager"
    assert len(lines) == 2 and lines[0].startswith("llmbin: compiling the decode step")
    assert "could not be compiled" in lines[1] and "no C++ compiler" in lines[1]


def test_screened_head_returns_the_float32_argmax():
    from llmbin.runtime.greedy_head import ScreenedHead

    g = torch.Generator().manual_seed(0)
    w = torch.randn(5000, 96, generator=g) * 0.05
    w[7] = w[11]
    w[7, 3] += 1e-5  # rows 7 and 11 differ far below int8 resolution
    head = ScreenedHead(w)
    for i in range(300):
        x = torch.randn(1, 96, generator=g) * (0.1 + 10 * torch.rand(1, generator=g))
        if i % 3 == 0:  # steer rows 7/11 to the top: the screen cannot tell them apart, the rescoring must
            x = (w[7] / w[7].norm() * 50 + x * 0.01).reshape(1, 96)
            x[0, 3] = 40.0 * (1 if i % 2 else -1)
        assert head.argmax(x) == int(torch.nn.functional.linear(x, w).argmax()), i
    assert head.candidates < 300 * 50  # it screens: a handful of rows rescored per token, not all 5000


def test_sampling_is_seeded_and_draws_from_the_nucleus_distribution():
    """Frequencies of 4000 seeded draws against the exact renormalized nucleus, computed here (4 sigma bounds)."""
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0, 2.0])
    assert {Sampler(1.0, 0.5, seed=s)(logits) for s in range(20)} == {0}  # p(0) = 0.70 >= 0.5: token 0 alone
    n = 4000
    for temperature, top_p in ((1.0, 0.9), (2.0, 1.0), (0.7, 0.99)):
        probs = [math.exp(v / temperature) for v in logits.tolist()]
        probs = [p / sum(probs) for p in probs]
        order = sorted(range(len(probs)), key=lambda i: -probs[i])
        kept, mass = [], 0.0
        for i in order:  # the smallest prefix of the sorted tokens whose mass reaches top_p
            if mass >= top_p:
                break
            kept.append(i)
            mass += probs[i]
        expected = {i: probs[i] / mass for i in kept}
        sampler = Sampler(temperature, top_p, seed=11)
        counts = collections.Counter(sampler(logits) for _ in range(n))
        assert set(counts) <= set(kept), (temperature, top_p, counts)
        for i, p in expected.items():
            assert abs(counts[i] / n - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (temperature, top_p, i, counts)
    s1, s2 = Sampler(1.0, 1.0, seed=7), Sampler(1.0, 1.0, seed=7)
    assert [s1(logits * 0.1) for _ in range(20)] == [s2(logits * 0.1) for _ in range(20)]
    assert Sampler()(logits) == 0


def test_text_stream_joins_to_the_full_decode(tokenizer):
    ids = tokenizer("naïve café — 東京 ok", add_special_tokens=False).input_ids
    stream = TextStream(tokenizer)
    assert "".join(stream.push(t) for t in ids) == tokenizer.decode(ids, skip_special_tokens=True)


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def test_cli_generate_prints_hf_greedy_continuation(tiny_llama_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = tokenizer.decode(hf_greedy(model, ids, 6), skip_special_tokens=True)
    result = run("generate", tiny_llama_dir, "--prompt", PROMPT, "--max-new-tokens", 6, "--no-compile")
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip("\n") == expected
    assert "tokens/s" in result.stderr and "eager static cache" in result.stderr
    piped = run("generate", tiny_llama_dir, "--max-new-tokens", 6, "--no-compile", input=PROMPT)
    assert piped.exit_code == 0 and piped.stdout == result.stdout


@pytest.mark.parametrize("args,message", [
    (["/no/such/model", "--prompt", "hi"], "does not exist"),
    (["{tiny}", "--prompt", "   "], "prompt is empty"),
    (["{tiny}"], "prompt is empty"),  # nothing on stdin
    (["{tiny}", "--prompt", "word " * 300], "longer than the model's context of 256"),
    (["{tiny}", "--prompt", "hello", "--max-new-tokens", "400"], "lower --max-new-tokens"),
    (["{tiny}", "--prompt", "hello", "--temperature", "1", "--top-p", "0"], "--top-p"),
], ids=["missing model", "blank prompt", "no prompt", "prompt over context", "prompt+new over context", "bad top-p"])
def test_cli_generate_bad_inputs(args, message, tiny_llama_dir):
    result = run("generate", *[a.replace("{tiny}", str(tiny_llama_dir)) for a in args], "--no-compile", input="")
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_decode_bench_rows_time_both_paths_on_the_same_tokens(tokenizer):
    from llmbin.cli.bench import _parse_batches
    from llmbin.runtime.decode_bench import decode_rows

    rows = decode_rows("packed", packed_tiny_llama(), tokenizer, new_tokens=6)
    assert [r["path"] for r in rows] == ["hf-generate", "static-compiled"]
    from llmbin.runtime.decode_bench import PROMPT as BENCH_PROMPT

    assert all(r["prompt_tokens"] == len(tokenizer(BENCH_PROMPT).input_ids) and r["new_tokens"] == 6 for r in rows)
    assert all(r["greedy_tokens_agree"] for r in rows)  # HF's loop and the compiled step chose the same tokens
    assert _parse_batches(None, None, ("1,4", "16")) == [1, 4, 16]


def test_decode_stats_account_for_the_time_the_stream_took(tokenizer):
    """The prefill and decode seconds DecodeStats reports are the stream's own time, measured around it here, and
    its rates are the token counts over them."""
    import time

    model = packed_tiny_llama()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    decoder = Decoder(model, ids.shape[1] + 12, compile=False)
    list(decoder.stream(ids, 3, Sampler()))  # warm (repacking, first calls)
    stats = DecodeStats()
    start = time.perf_counter()
    tokens = list(decoder.stream(ids, 12, Sampler(), frozenset(), stats))
    wall = time.perf_counter() - start
    timed = stats.prefill_s + stats.decode_s + stats.compile_s
    assert len(tokens) == 12 and stats.decode_steps == 11 and stats.prompt_tokens == ids.shape[1]
    assert 0.5 * wall <= timed <= wall  # every step is inside a timed region; the generator's own work is not
    assert stats.decode_tokens_per_s == pytest.approx(11 / stats.decode_s)
    assert stats.prefill_tokens_per_s == pytest.approx(ids.shape[1] / stats.prefill_s)


def test_decode_steps_run_on_the_decoder_threads_and_restore_them(tokenizer, monkeypatch):
    from llmbin.kernels import cpu

    ext = cpu.load_extension()
    if ext is None:
        pytest.skip(f"the CPU kernel is not built here ({cpu.build_error()})")
    model = packed_tiny_llama()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        decoder = Decoder(model, ids.shape[1] + 4, compile=False, decode_threads=1)
        seen, step = [], decoder._step
        monkeypatch.setattr(decoder, "_step", lambda *a: (seen.append(torch.get_num_threads()), step(*a))[1])
        stats = DecodeStats()
        assert len(list(decoder.stream(ids, 4, Sampler(), frozenset(), stats))) == 4
        assert seen == [1, 1, 1] and stats.decode_threads == 1 and torch.get_num_threads() == 2
        # 2 decode threads: torch's ops still on 1, the packed matmuls on the kernel's pool of 2, released after
        decoder = Decoder(model, ids.shape[1] + 4, compile=False, decode_threads=2)
        seen.clear()
        pool = []
        step = decoder._step
        monkeypatch.setattr(decoder, "_step", lambda *a: (seen.append(torch.get_num_threads()),
                                                          pool.append(ext.gemv_threads()), step(*a))[2])
        stats = DecodeStats()
        assert len(list(decoder.stream(ids, 4, Sampler(), frozenset(), stats))) == 4
        assert seen == [1, 1, 1] and pool == [2, 2, 2] and stats.decode_threads == 2
        assert torch.get_num_threads() == 2 and ext.gemv_threads() == 1
        # a float model's steps run on the threads asked for (3), all torch's: the kernel's pool is not touched
        float_model = tiny_llama(seed=4).eval()
        decoder = Decoder(float_model, ids.shape[1] + 4, compile=False, decode_threads=3)
        seen.clear(), pool.clear()
        step = decoder._step
        monkeypatch.setattr(decoder, "_step", lambda *a: (seen.append(torch.get_num_threads()),
                                                          pool.append(ext.gemv_threads()), step(*a))[2])
        assert len(list(decoder.stream(ids, 4, Sampler(), frozenset(), DecodeStats()))) == 4
        assert seen == [3, 3, 3] and pool == [1, 1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
