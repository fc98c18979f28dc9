"""Tensor and pipeline parallelism of a packed checkpoint on CPU, 2 ranks, one core each.

Tensor parallel: q/k/v, gate/up and the vocabulary split by rows, o_proj and down_proj (row-parallel) by input
columns, which PTQ1.61's one-group-per-row layout allows anywhere. Pipeline parallel splits by layer. Both must
give the transformers path's greedy tokens.
"""
from __future__ import annotations

import os

import pytest

import llmbin
from compare import PROMPTS, compare, reference_greedy, served_greedy

STEPS = 16

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two ranks need two cores")


@pytest.fixture
def two_ranks(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # vLLM-CPU binds each rank's threads to its own core


def check(path, llm):
    model, tokenizer = llmbin.load(path)
    found = compare(reference_greedy(model, tokenizer, PROMPTS, STEPS), served_greedy(llm, PROMPTS, STEPS))
    assert found["tokens"] >= 2 * STEPS


def test_tensor_parallel_two_ranks(quantized, engines, two_ranks):
    path = quantized("ptq161")
    check(path, engines(path, tensor_parallel_size=2))


def test_pipeline_parallel_two_ranks(quantized, engines, two_ranks):
    """Compiled: with enforce_eager, vLLM-CPU 0.32 skips the warm-up that allocates the buffers a later pipeline
    stage receives activations in (AssertionError in sync_and_gather_intermediate_tensors, float models too)."""
    path = quantized("ptq161")
    check(path, engines(path, pipeline_parallel_size=2, enforce_eager=False))
