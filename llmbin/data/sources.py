"""Where text comes from: a local .txt/.jsonl/.parquet file, or a named hub dataset through `datasets`."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import LlmbinError

# name -> (datasets args, split for calibration, split for evaluation, text column, joiner)
HUB_TEXTS = {
    "wikitext2": (("wikitext", "wikitext-2-raw-v1"), "train", "test", "text", "\n\n"),
    "ptb": (("ptb_text_only", "penn_treebank"), "train", "test", "sentence", " "),
    "c4": (("allenai/c4", "en"), "train", "validation", "text", " "),
}


def _read_file(path: Path, field: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".txt", ".md", ""):
        return path.read_text(encoding="utf-8", errors="replace")
    if suffix == ".jsonl":
        texts = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    texts.append(json.loads(line)[field])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise LlmbinError(f"{path}:{n}: not a JSON object with a {field!r} field") from None
        return "\n\n".join(texts)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if field not in table.column_names:
            raise LlmbinError(f"{path}: no {field!r} column (columns: {', '.join(table.column_names)})")
        return "\n\n".join(str(t) for t in table.column(field).to_pylist())
    raise LlmbinError(f"{path}: unsupported text file type {suffix!r}; use .txt, .jsonl or .parquet")


def load_text(source: str, split: str = "calibration", field: str = "text") -> str:
    """Return the whole text of a source. `split` picks train/test for hub datasets."""
    path = Path(source)
    if path.exists():
        return _read_file(path, field)
    if source not in HUB_TEXTS:
        raise LlmbinError(f"text source {source!r} is neither a file nor one of {', '.join(HUB_TEXTS)} "
                          "(or 'selfgen' for calibration)")
    args, train, test, column, joiner = HUB_TEXTS[source]
    import datasets

    try:
        if source == "c4":  # one shard of each split is plenty for windows
            shard = "en/c4-train.00000-of-01024.json.gz" if split == "calibration" else "en/c4-validation.00000-of-00008.json.gz"
            data = datasets.load_dataset("allenai/c4", data_files=shard, split="train")
        else:
            data = datasets.load_dataset(*args, split=train if split == "calibration" else test)
    except Exception as exc:  # datasets raises many types when offline
        raise LlmbinError(f"could not get dataset {source} from the Hugging Face hub ({type(exc).__name__}); "
                          "offline? pass a local .txt/.jsonl/.parquet file instead") from None
    return joiner.join(data[column])
