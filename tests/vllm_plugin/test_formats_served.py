"""Every llmbin format served by vLLM on CPU gives llmbin's transformers tokens and log-probabilities."""
from __future__ import annotations

import logging

import pytest
import llmbin
from compare import (LOGPROB_TOL, LONG_PROMPT, PROMPTS, compare, reference_greedy, reference_prompt_logprobs,
                     served_greedy, served_prompt_logprobs)
from plugin_checkpoints import CHECKPOINTS

STEPS = 24


def reference(path):
    model, tokenizer = llmbin.load(path)  # float32
    return reference_greedy(model, tokenizer, PROMPTS, STEPS), reference_prompt_logprobs(model, tokenizer, LONG_PROMPT)


@pytest.mark.parametrize("name", [*CHECKPOINTS, "bitplane-variants"])
def test_served_tokens_and_logprobs_match_transformers(name, quantized, engines):
    path = quantized(name)
    ref_greedy, ref_prompt = reference(path)
    llm = engines(path)
    found = compare(ref_greedy, served_greedy(llm, PROMPTS, STEPS))
    assert found["tokens"] >= 2 * STEPS  # near ties end a comparison early; most of it must still happen
    served_prompt = served_prompt_logprobs(llm, LONG_PROMPT)
    assert len(served_prompt) == len(ref_prompt) > 20
    assert max(abs(a - b) for a, b in zip(ref_prompt, served_prompt)) <= LOGPROB_TOL


def test_the_backend_of_each_format_is_said_once(quantized, engines):
    from llmbin.integrations.vllm import products

    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    products.log.addHandler(handler)
    products._said.clear()  # earlier engines in this process said theirs already
    try:
        engines(quantized("ptq161"))
        engines(quantized("pbllm-bitmap"))
    finally:
        products.log.removeHandler(handler)
    said = "\n".join(lines)
    assert "bitplane matrices on cpu float32 run on the cpu lookup-table backend" in said
    assert "uniform matrices on cpu float32 run on the cpu lookup-table backend" in said  # the packed embedding
    assert ("masked matrices on cpu float32 run on the torch reference (dequantize + F.linear) backend (cpu: handles "
            "the bitplane and uniform formats only, not masked") in said
    assert said.count("bitplane matrices") == 1  # once, not once per layer


def test_compiled_engine_matches_too(quantized, engines):
    """vLLM's CPU worker traces the model with dynamo and compiles it with inductor unless enforce_eager: the
    packed product is the op llmbin_cpu::lut_matmul there (its fake gives inductor the shapes)."""
    path = quantized("ptq161")
    ref_greedy, _ = reference(path)
    found = compare(ref_greedy, served_greedy(engines(path, enforce_eager=False), PROMPTS, STEPS))
    assert found["tokens"] >= 2 * STEPS


def test_bfloat16_serving_stays_close(quantized, engines):
    """The CPU default dtype: activations reach the kernels in bfloat16. Against the float32 reference, tokens agree
    except where its two best are within bfloat16's resolution of logits (0.1), log-probabilities within 0.1."""
    path = quantized("dbllm")
    ref_greedy, _ = reference(path)
    found = compare(ref_greedy, served_greedy(engines(path, dtype="bfloat16"), PROMPTS, STEPS), tol=0.1, tie=0.1)
    assert found["tokens"] >= STEPS
