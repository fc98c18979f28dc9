"""`llmbin generate`: stream text from a model through the decode engine (runtime/decoder.py)."""
from __future__ import annotations

import sys

import click
import torch

from ..host.environment import machine_line
from ..runtime.decoder import Decoder, DecodeStats
from ..runtime.prompt import check_length, check_prompt, encode_prompt, load_for_generation, stop_token_ids, TextStream
from ..runtime.sampling import Sampler
from .errors import friendly_errors


@click.command("generate")
@click.argument("model")
@click.option("--prompt", default=None, help="Prompt text (default: read stdin).")
@click.option("--max-new-tokens", default=128, show_default=True, help="Tokens to generate at most.")
@click.option("--temperature", default=0.0, show_default=True, help="0: greedy; else sample at this temperature.")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling mass (with --temperature > 0).")
@click.option("--seed", default=0, show_default=True, help="Sampling seed.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--compile/--no-compile", "compile_step", default=None,
              help="Compile the decode step with torch.compile (default: for packed models; about a minute the "
                   "first time for a model shape on 2 cores, seconds once cached).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=None,
              help="CPU threads for prefill and decode (default: torch's count). A packed model's decode steps run "
                   "their small ops on 1 thread and split the packed matmuls over this many spinning threads.")
@friendly_errors
def generate_command(model, prompt, max_new_tokens, temperature, top_p, seed, chat, compile_step, device, threads):
    """Generate text from MODEL (packed checkpoint, HF directory, .gguf file or bundled name), streaming tokens."""
    model_ref = model
    if threads:
        torch.set_num_threads(threads)
    sampler = Sampler(temperature, top_p, seed)
    if prompt is None:
        prompt = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    check_prompt(prompt)
    model, tokenizer = load_for_generation(model_ref, device)
    ids = encode_prompt(tokenizer, prompt, chat)
    check_length(model, ids.shape[1], max_new_tokens)
    decoder = Decoder(model, ids.shape[1] + max_new_tokens, compile=compile_step, decode_threads=threads)
    stats, text = DecodeStats(), TextStream(tokenizer)
    for token in decoder.stream(ids, max_new_tokens, sampler, stop_token_ids(model, tokenizer), stats):
        click.echo(text.push(token), nl=False)
        sys.stdout.flush()
    click.echo("")
    compile_note = f", first compiled step {stats.compile_s:.1f} s" if stats.compile_s else ""
    head_note = ", screened greedy head" if stats.head == "screened" else ""
    click.echo(f"[llmbin] {stats.new_tokens} tokens: decode {stats.decode_tokens_per_s:.1f} tokens/s ({stats.mode} "
               f"static cache{head_note}{compile_note}), prefill {stats.prompt_tokens} tokens at {stats.prefill_tokens_per_s:.1f} "
               f"tokens/s; {machine_line()}, decode steps on {stats.decode_threads}", err=True)
