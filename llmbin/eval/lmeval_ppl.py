"""Perplexity under the "lm-eval" protocol: lm-eval's `wikitext` task (wikitext-2 raw, document level).

Each test document is scored with rolling log-likelihood windows of `max_length` tokens; the headline is
word perplexity = exp(total NLL / total words), which is not comparable with the "gptq" protocol's token
perplexity. The data comes from the Hugging Face hub (EleutherAI/wikitext_document_level) or its cache.
"""
from __future__ import annotations

import time

from ..errors import LlmbinError
from ..integrations.lmeval import (DEFAULT_SEEDS, builtin_task_dir, go_offline, hflm, hub_reachable, lm_eval_version,
                                   load_tasks, quiet_lm_eval, run_tasks)

PROTOCOL = "lm-eval"
TASK = "wikitext"
SOURCES = ("wikitext", "wikitext2", "wikitext-2")
DATASET = "EleutherAI/wikitext_document_level (wikitext-2-raw-v1)"


def wikitext_perplexity(model, tokenizer, max_length: int, limit: int | float | None = None, batch_size: int = 4,
                        seeds: dict | None = None, lm=None, verbose: bool = False) -> dict:
    from lm_eval.tasks import TaskManager

    quiet_lm_eval(verbose)
    start = time.perf_counter()
    seeds = {**DEFAULT_SEEDS, **(seeds or {})}
    if not hub_reachable():
        go_offline()  # read the cache only: fails in a second instead of ~30 s of retries
    manager = TaskManager(include_path=str(builtin_task_dir(TASK)), include_defaults=False)
    try:
        built = load_tasks(manager, [TASK])
    except LlmbinError:
        raise LlmbinError(f"protocol lm-eval needs lm-eval's wikitext data, {DATASET}, from the Hugging Face hub: "
                          "it is neither cached nor reachable; use --protocol gptq with a local text") from None
    lm = lm or hflm(model, tokenizer, batch_size, max_length)
    raw = run_tasks(lm, manager, built, limit, None, seeds)
    result = raw["results"][TASK]
    n = raw.get("n-samples", {}).get(TASK, {})
    return {"name": TASK, "protocol": PROTOCOL, "metric": "word_perplexity", "ppl": result["word_perplexity,none"],
            "byte_perplexity": result.get("byte_perplexity,none"), "bits_per_byte": result.get("bits_per_byte,none"),
            "task_version": raw.get("versions", {}).get(TASK), "documents": n.get("effective"),
            "documents_total": n.get("original"), "max_length": lm.max_length, "limit": limit, "seeds": seeds,
            "lm_eval": lm_eval_version(), "seconds": round(time.perf_counter() - start, 2)}
