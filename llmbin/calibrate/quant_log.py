"""The run's log: one JSON line per quantized module (loss, samples, seconds, peak memory) for quant_log.jsonl,
and a human line through tqdm (so it does not break the progress bar)."""
from __future__ import annotations

import json

from tqdm.auto import tqdm

from ..host.memory import peak_rss_mb


class QuantLog:
    """One JSON line per module (loss, samples, seconds, peak memory) and a human line through tqdm."""

    def __init__(self, path=None, verbose: bool = True):
        self.records: list[dict] = []
        self.path = path
        self.verbose = verbose

    def module(self, **record) -> None:
        record["peak_rss_mb"] = round(peak_rss_mb(), 1)
        self.records.append(record)
        if self.verbose:
            extras = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                              if k not in ("module", "layer"))
            tqdm.write(f"  {record['module']}: {extras}")

    def note(self, message: str) -> None:
        self.records.append({"note": message})
        if self.verbose:
            tqdm.write(f"[llmbin] {message}")

    def jsonl(self) -> str:
        return "".join(json.dumps(r) + "\n" for r in self.records)
