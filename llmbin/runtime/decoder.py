"""The decode engine: a static-KV-cache loop with a compiled step (what `llmbin generate` runs).

HF `generate` with a dynamic cache spends most of a small model's decode step in Python (module
calls, cache concatenation, logits processors). Here the prompt is prefilled eagerly into a
StaticCache sized once per Decoder, and each new token is one call of `step(token, position)`,
compiled by torch.compile with fixed shapes: every packed linear is the extension's C++ op
(llmbin_cpu::lut_matmul) or the triton custom op, so the whole step is one graph and its
elementwise work fuses. The compiled step has no guards (the step's inputs never change shape or
identity afterwards): each Decoder compiles a function of its own, so no other Decoder's step can be found
in its cache. Greedy tokens equal the eager step's (tests); when the step
cannot compile, one line says why and decoding continues eagerly. Greedy decoding with a float32
head on CPU picks the token with greedy_head.ScreenedHead (exact argmax, a quarter of the bytes).
"""
from __future__ import annotations

import itertools
import sys
import time
import types
from dataclasses import dataclass
from typing import Iterator

import torch

from ..errors import LlmbinError, warn_once
from ..host.threads import cpu_threads
from ..kernels.cpu import gemv_threads
from ..kernels.ops import decode_attention_op
from ..models.cache_api import cache_kwargs
from ..nn import PackedMatrix
from ..nn.grouped_attention import use_grouped_attention
from .greedy_head import ScreenedHead
from .sampling import Sampler

# A C++ wrapper calls the step's ~400 kernels without a Python call each: SmolLM2 ptq161 decode 2 threads ~170 ->
# ~220 tokens/s; the first compile takes ~50 s instead of ~20 (both cached afterwards).
COMPILE_OPTIONS = {"cpp_wrapper": True}


def compile_options() -> dict:
    """COMPILE_OPTIONS and the pass that makes each layer's q/k/v and gate/up products one call each
    (fused_products.py; imported here, not at the top: torch._inductor costs every CLI start ~1.2 s)."""
    from .fused_products import FuseSharedInputProducts

    return {**COMPILE_OPTIONS, "post_grad_custom_pre_pass": FuseSharedInputProducts()}


def _no_guards(entries) -> list[bool]:
    """Dynamo's guards on the step: none. Checking them cost 0.5 ms of a SmolLM2 GPTQ-4 token's 5.5 on a Zen 4,
    even with set_stance(skip_guard_eval_unsafe=True) (benchmarks/results/zen4-guards/)."""
    return [False] * len(entries)


_STEP_FUNCTIONS = itertools.count()


def _own_function(method):
    """`method` with a code object of its own. Dynamo keeps compiled frames on the code object: a step compiled
    without guards must never be found by another Decoder (another model, other shapes). Today's Dynamo also keys
    an entry on the torch.compile call that made it, which would keep Decoders apart too, but that is not a
    documented promise; an own code object is."""
    f = method.__func__
    name = f"{f.__name__}_{next(_STEP_FUNCTIONS)}"
    code = f.__code__.replace(co_name=name, co_qualname=f"{f.__qualname__.rpartition('.')[0]}.{name}")
    return types.MethodType(types.FunctionType(code, f.__globals__, name, f.__defaults__, f.__closure__),
                            method.__self__)


CACHE_ROUND = 128  # cache lengths are rounded up to this: one compiled graph serves many prompt lengths


@dataclass
class DecodeStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0  # steps after the first compiled one
    decode_steps: int = 0
    compile_s: float = 0.0  # the first compiled step (tracing + codegen), excluded from decode_s
    mode: str = "eager"
    head: str = "float"  # "screened": greedy tokens picked by ScreenedHead
    decode_threads: int = 0  # CPU threads of the token-by-token steps (packed: the matmuls' pool, decode_threads_for)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_steps / self.decode_s if self.decode_s else 0.0


def prepare_packed(model) -> int:
    """Repack every packed matrix (linears, embedding, head) for the model's dtype now, so prefill timings measure
    compute; -> how many there are."""
    dtype = next(model.parameters()).dtype
    layers = [m for m in model.modules() if isinstance(m, PackedMatrix)]
    for m in layers:
        m.prepare(dtype)
    return len(layers)


def screened_greedy_head(model):
    """A ScreenedHead when the logits are exactly a bias-free float32 linear of the decoder's output on CPU
    (checked on a probe: no softcapping or scaling in between), else None."""
    head = model.get_output_embeddings()
    if not (isinstance(head, torch.nn.Linear) and head.bias is None and head.weight.dtype == torch.float32
            and head.weight.device.type == "cpu" and ScreenedHead.available()):
        return None
    try:
        decoder = model.get_decoder()
        probe = torch.arange(3).reshape(1, 3)
        with torch.inference_mode():
            logits = model(input_ids=probe, use_cache=False, logits_to_keep=1).logits[:, -1]
            hidden = decoder(input_ids=probe, use_cache=False).last_hidden_state[:, -1]
            same = torch.equal(torch.nn.functional.linear(hidden, head.weight), logits)
    except (AttributeError, NotImplementedError, TypeError, ValueError) as exc:  # no separable decoder
        warn_once(f"greedy decoding reads the whole float32 head every token: {type(model).__name__} has no decoder "
                  f"whose output the head multiplies ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})")
        return None
    if not same:
        warn_once(f"greedy decoding reads the whole float32 head every token: {type(model).__name__}'s logits are "
                  "not a plain product of its decoder's output (softcapping or scaling in between)")
        return None
    return ScreenedHead(head.weight)


def decode_threads_for(packed: bool, device: torch.device, threads: int | None) -> tuple[int | None, int | None]:
    """(torch threads, packed-matmul threads) for the token-by-token steps; None leaves a count as it is.

    A packed decode step on CPU is ~400 small ops of 1-20 us. OpenMP teams cost more than they give on
    those (passive threads sleep between ops: SmolLM2 ptq161, 2 idle cores, 61.6 tokens/s on 2 threads
    against 131 on 1), so the step's torch ops run on one thread and only its packed matmuls are split,
    over `threads` (default: torch's count) threads of the kernel's own spinning pool
    (benchmarks/results/decode-static.md). Float models keep torch's threading. Prefill keeps every thread."""
    if packed and device.type == "cpu":
        return 1, threads or torch.get_num_threads()
    return threads, None


def _device(model) -> torch.device:
    return next(model.parameters(), next(model.buffers(), torch.empty(0))).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Decoder:
    """Prefill + token-by-token decode over one StaticCache of `max_len` tokens.

    A model attending with `sdpa` is switched to `llmbin_sdpa` (nn/grouped_attention.py: the same attention, without
    copying the cache per KV group for one query token, and a faster causal prompt pass), unless LLMBIN_ATTENTION=sdpa;
    it stays switched after the Decoder is gone.

    compile: True compiles the step (falling back to eager with one line on stderr if it cannot),
    False keeps it eager (the reference the compiled step is tested against), None (auto) compiles
    models with packed layers only: on CPU a compiled float32 SmolLM2 step measured slower than the
    eager one (18 vs 24 tokens/s, 1 thread: inductor's extern mm calls), a packed one faster (51 vs 40).
    """

    def __init__(self, model, max_len: int, compile: bool | None = None, log=None, screened_head: bool = True,
                 decode_threads: int | None = None):
        from transformers import StaticCache

        self.model, self.device = model, _device(model)
        self.max_len = -(-max_len // CACHE_ROUND) * CACHE_ROUND
        context = getattr(model.config, "max_position_embeddings", None)
        if context:
            self.max_len = min(self.max_len, int(context))
        self.cache = StaticCache(config=model.config, max_cache_len=self.max_len)
        packed = prepare_packed(model)
        compile = bool(packed) if compile is None else compile
        self.step_threads, self.gemv_threads = decode_threads_for(bool(packed), self.device, decode_threads)
        # one query token attends to the static cache without a copy per KV group, eager or compiled alike
        self.grouped_attention = use_grouped_attention(model)
        if self.grouped_attention and self.device.type == "cpu":
            decode_attention_op()  # build/load the op now, not inside the first timed step
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.head = screened_greedy_head(model) if screened_head else None
        self.compile = compile  # becomes False when compiling fails
        self.compiled = {}  # step kind ("hidden" or "logits") -> its compiled function, once its first call ran

    @property
    def mode(self) -> str:
        return "compiled" if self.compile else "eager"

    def _logits_step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=token, position_ids=position, use_cache=True, logits_to_keep=1,
                         **cache_kwargs(self.cache))
        return out.logits[:, -1]

    def _hidden_step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """The final hidden state (what the head multiplies), for ScreenedHead."""
        out = self.model.get_decoder()(input_ids=token, position_ids=position, use_cache=True,
                                       **cache_kwargs(self.cache))
        return out.last_hidden_state[:, -1]

    def _step(self, kind: str, token, position):
        eager = self._hidden_step if kind == "hidden" else self._logits_step
        if self.mode == "eager":
            return eager(token, position)
        if kind in self.compiled:
            return self.compiled[kind](token, position)
        self.log("llmbin: compiling the decode step (about a minute the first time for a model shape, seconds once "
                 "cached; --no-compile skips it)")
        try:
            fn = torch.compile(_own_function(eager), dynamic=False, fullgraph=True,
                               options={**compile_options(), "guard_filter_fn": _no_guards})
            out = fn(token, position)
        except Exception as exc:  # noqa: BLE001 - any compile failure: decode eagerly, say so once
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            self.log(f"llmbin: the decode step could not be compiled ({type(exc).__name__}: {first}); decoding eagerly")
            self.compile = False
            return eager(token, position)
        self.compiled[kind] = fn
        return out

    @torch.inference_mode()
    def stream(self, input_ids: torch.Tensor, max_new_tokens: int, sampler: Sampler | None = None,
               stop_ids: set | frozenset = frozenset(), stats: DecodeStats | None = None) -> Iterator[int]:
        """Yield up to max_new_tokens token ids (stopping after one in stop_ids) for one prompt [1, L]."""
        sampler = sampler or Sampler()
        stats = stats if stats is not None else DecodeStats()
        ids = input_ids.reshape(1, -1).to(self.device)
        length = ids.shape[1]
        if length + max_new_tokens > self.max_len:
            raise LlmbinError(f"{length} prompt + {max_new_tokens} new tokens exceed this decoder's cache of "
                              f"{self.max_len}; build it with a larger max_len")
        self.cache.reset()
        head = self.head if sampler.temperature <= 0 else None
        kind = "hidden" if head is not None else "logits"
        stats.prompt_tokens, stats.mode, stats.head = length, self.mode, "screened" if head is not None else "float"
        t = time.perf_counter()
        logits = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache_kwargs(self.cache)).logits[:, -1]
        token = sampler(logits)
        _sync(self.device)
        stats.prefill_s = time.perf_counter() - t
        with cpu_threads(self.step_threads), gemv_threads(self.gemv_threads):
            stats.decode_threads = max(self.gemv_threads or 1, torch.get_num_threads())
            yield from self._decode(token, length, max_new_tokens, sampler, stop_ids, stats, head, kind)
        stats.mode = self.mode  # eager if compiling failed on the way

    def _decode(self, token, length, max_new_tokens, sampler, stop_ids, stats, head, kind) -> Iterator[int]:
        for i in range(max_new_tokens):
            stats.new_tokens += 1
            yield token
            if token in stop_ids or i + 1 == max_new_tokens:
                return
            tok = torch.tensor([[token]], device=self.device)
            pos = torch.tensor([[length + i]], device=self.device)
            cold = self.mode == "compiled" and kind not in self.compiled
            t = time.perf_counter()
            out = self._step(kind, tok, pos)
            token = head.argmax(out) if head is not None else sampler(out)
            _sync(self.device)
            dt = time.perf_counter() - t
            if cold:
                stats.compile_s += dt
            else:
                stats.decode_s, stats.decode_steps = stats.decode_s + dt, stats.decode_steps + 1


