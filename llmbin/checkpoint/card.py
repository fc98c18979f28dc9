"""The checkpoint's README: what it is, how it was made, how to load it."""
from __future__ import annotations

import json

from .size import describe


def model_card(config: dict, size: dict | None = None) -> str:
    recipe = config.get("recipe", {})
    prov = config.get("provenance", {})
    bits = config.get("bits", {})
    lines = [
        f"# {prov.get('model', 'model')} quantized with llmbin ({recipe.get('method', '?')})", "",
        "Packed 1-2 bit checkpoint made by [llmbin](https://pypi.org/project/llmbin/). Load it with",
        "", "```python", "import llmbin, transformers",
        "model = transformers.AutoModelForCausalLM.from_pretrained('<this directory>')", "```", "",
        f"- method: `{recipe.get('method')}` with parameters `{json.dumps(recipe.get('params', {}))}`",
        f"- bits per weight of the quantized linears: {bits.get('bpw_paper')} (paper convention), "
        f"{bits.get('bpw_all_in')} (all-in, every stored bit)",
        *([f"- whole model: {describe(size)}"] if size else []),
        f"- token embeddings / output head: {_embedding_line(config.get('embeddings'))}; other unquantized "
        f"tensors stored as {config.get('storage_dtype') or 'the model dtype'}",
        f"- calibration: {prov.get('calibration')} (token hash {prov.get('calibration_token_hash')}), seed {prov.get('seed')}",
        f"- made with llmbin {prov.get('llmbin')}, torch {prov.get('torch')}, transformers {prov.get('transformers')}",
    ]
    if config.get("method_notes"):
        lines += ["", "## Method notes", "", config["method_notes"]]
    return "\n".join(lines) + "\n"


def _embedding_line(record: dict | None) -> str:
    if not record or not (record.get("input") or record.get("output")):
        return "not quantized"
    parts = []
    for role in ("input", "output"):
        entry = record.get(role)
        if entry is None:
            parts.append(f"{role} not quantized")
        elif "tied_to" in entry:
            parts.append(f"{role} tied to {entry['tied_to']}")
        else:
            meta = entry["meta"]
            group = "per row" if meta["group_size"] >= meta["in_features"] else f"groups of {meta['group_size']}"
            parts.append(f"{role} int{meta['bits']} ({group})")
    return ", ".join(parts)
