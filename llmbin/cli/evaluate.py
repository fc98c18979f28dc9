"""`llmbin eval`: perplexity under a labelled protocol and lm-eval tasks, with an optional baseline."""
from __future__ import annotations

import click

from ..eval.suite import EvalSpec, evaluate_with_baseline
from .errors import friendly_errors
from .options import write_json


@click.command(name="eval")
@click.argument("model")
@click.option("--ppl", default=None, help="Comma-separated texts: files (.txt/.jsonl/.parquet) or wikitext2, c4, ptb.")
@click.option("--protocol", type=click.Choice(["gptq", "lm-eval"]), default="gptq", show_default=True,
              help="Perplexity protocol: gptq (token ppl over fixed windows) or lm-eval (its wikitext task, word ppl).")
@click.option("--seqlen", type=int, default=2048, show_default=True, help="Tokens per perplexity window (lm-eval: max length).")
@click.option("--max-windows", type=int, default=None, help="Use only the first N windows.")
@click.option("--bos", is_flag=True, help="Put a BOS token before each window (Gemma needs it).")
@click.option("--tasks", default=None, help="Comma-separated lm-eval tasks (zero-shot unless --num-fewshot).")
@click.option("--include-path", multiple=True, type=click.Path(), help="Directory of local lm-eval task YAML files; repeatable.")
@click.option("--limit", type=float, default=None, help="Only the first N examples (documents) per task; < 1: a fraction.")
@click.option("--num-fewshot", type=int, default=None, help="Few-shot examples per prompt [the task's, else 0].")
@click.option("--batch-size", type=int, default=4, show_default=True, help="lm-eval batch size.")
@click.option("--seed", type=int, default=None, help="One seed for lm-eval's random, numpy, torch and few-shot sampler [0/1234/1234/1234].")
@click.option("--baseline", default=None, help="Full-precision model scored with the identical protocol; shows the delta.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "json_path", default=None, type=click.Path(), help="Write results as JSON here.")
@click.option("-v", "--verbose", is_flag=True, help="lm-eval's own log lines.")
@friendly_errors
def eval_command(model, ppl, protocol, seqlen, max_windows, bos, tasks, include_path, limit, num_fewshot, batch_size, seed,
          baseline, device, json_path, verbose):
    """Score MODEL (packed llmbin dir, or any model reference): perplexity under a labelled protocol, lm-eval tasks."""
    spec = EvalSpec.from_options(ppl, protocol, tasks, limit, seed, seqlen=seqlen, max_windows=max_windows, bos=bos,
                                 include_path=include_path, num_fewshot=num_fewshot, batch_size=batch_size)
    record, lines = evaluate_with_baseline(model, spec, device, baseline, verbose)
    for line in lines:
        click.echo(line)
    write_json(json_path, record)
