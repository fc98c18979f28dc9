"""Greedy decoding by llmbin's transformers path (the independent computation) and by a vLLM engine, compared.

The reference re-runs the whole sequence for every new token (no KV cache), in float32 unless asked, and keeps
each step's log-probabilities and the gap between its two best tokens: where vLLM picks another token, that is
acceptable only at a near tie (gap below TIE), and the sequences are compared no further.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a small village,"]
LONG_PROMPT = ("Packing weights into single bits makes a language model small enough to serve from a laptop, "
               "and the kernels that read those bits decide how fast it answers.")
LOGPROB_TOL = 1e-4  # float32: vLLM's attention and llmbin's kernels against transformers' (measured ~3e-6)
TIE = 1e-3  # a divergence is accepted only where the reference's two best tokens are closer than this


@dataclass
class Greedy:
    tokens: list[int]
    logprobs: list[float]  # of each chosen token
    gaps: list[float]  # best minus second-best log-probability at each step


def reference_greedy(model, tokenizer, prompts: list[str], steps: int) -> list[Greedy]:
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        run = Greedy([], [], [])
        with torch.no_grad():
            for _ in range(steps):
                logprobs = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
                top = torch.topk(logprobs, 2)
                token = int(top.indices[0])
                run.tokens.append(token)
                run.logprobs.append(float(top.values[0]))
                run.gaps.append(float(top.values[0] - top.values[1]))
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        out.append(run)
    return out


def reference_prompt_logprobs(model, tokenizer, prompt: str) -> list[float]:
    """log p(token t | tokens < t) for every prompt token after the first."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return logprobs.gather(1, ids[0, 1:, None])[:, 0].tolist()


def served_greedy(llm, prompts: list[str], steps: int) -> list[Greedy]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=steps, logprobs=1, ignore_eos=True)
    out = []
    for result in llm.generate(prompts, params, use_tqdm=False):
        completion = result.outputs[0]
        tokens = list(completion.token_ids)
        out.append(Greedy(tokens, [step[t].logprob for step, t in zip(completion.logprobs, tokens)], []))
    return out


def served_prompt_logprobs(llm, prompt: str) -> list[float]:
    from vllm import SamplingParams

    result = llm.generate([prompt], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    return [step[t].logprob for step, t in zip(result.prompt_logprobs[1:], result.prompt_token_ids[1:])]


def compare(reference: list[Greedy], served: list[Greedy], tol: float = LOGPROB_TOL, tie: float = TIE) -> dict:
    """Raise AssertionError at the first disagreement that is not a near tie; -> what was compared."""
    compared, worst, ties = 0, 0.0, []
    for i, (ref, got) in enumerate(zip(reference, served)):
        for step, (want, have) in enumerate(zip(ref.tokens, got.tokens)):
            if want != have:
                assert ref.gaps[step] < tie, (f"prompt {i} step {step}: vLLM chose {have}, transformers {want} with a "
                                              f"margin of {ref.gaps[step]:.2e} (not a near tie)")
                ties.append((i, step, ref.gaps[step]))
                break
            worst = max(worst, abs(ref.logprobs[step] - got.logprobs[step]))
            compared += 1
        assert worst <= tol, f"prompt {i}: a chosen token's log-probability differs by {worst:.2e} (> {tol})"
    return {"tokens": compared, "max_logprob_diff": worst, "near_ties": ties}
