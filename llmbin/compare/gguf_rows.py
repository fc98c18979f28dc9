"""llama.cpp's GGUF files as compare rows: scored by the same protocol as llmbin's checkpoints (transformers loads
and dequantizes them; the numbers are the file's own weights), and sized the same way (every byte of the file
against the parameters it holds, and the bits per weight of its decoder matrices, llmbin's "all-in" bits)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..errors import LlmbinError
from .labeled import labeled_paths


def parse_gguf_rows(items) -> list[tuple[str, Path]]:
    """('Q4_0=smol-Q4_0.gguf' or 'smol-Q4_0.gguf', ...) -> [(label, path)]; the label defaults to the file's stem."""
    return labeled_paths(items, "--gguf", lambda p: p.suffix == ".gguf" and p.is_file(), "a .gguf file", "FILE.gguf",
                         lambda p: p.stem)


def gguf_size(path: Path) -> dict:
    """The file's bytes and parameters, bits per parameter, and its decoder matrices' bits per weight by type."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - gguf raises several kinds for a damaged file
        raise LlmbinError(f"{path} is not a readable GGUF file ({str(exc).splitlines()[0][:100]})") from None
    params = sum(int(t.n_elements) for t in reader.tensors)
    decoder = [t for t in reader.tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    weights = sum(int(t.n_elements) for t in decoder)
    file_bytes = path.stat().st_size
    return {"file_bytes": file_bytes, "parameters": params,
            "bits_per_parameter": round(8 * file_bytes / max(params, 1), 4), "fp16_bytes": 2 * params,
            "times_smaller_than_fp16": round(2 * params / max(file_bytes, 1), 2),
            "decoder_bits_per_weight": round(8 * sum(int(t.n_bytes) for t in decoder) / max(weights, 1), 4),
            "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors).most_common())}


def gguf_record(label: str, path: Path) -> dict:
    size = gguf_size(path)
    return {"label": label, "method": "llama.cpp", "kind": "gguf", "file": str(path.resolve()),
            "file_stamp": [size["file_bytes"], path.stat().st_mtime_ns], "recipe": None, "error": None,
            "bits": {"bpw_paper": None, "bpw_all_in": size["decoder_bits_per_weight"]}, "size": size}
