"""Files that appear whole or not at all, and the hashes that name what they hold.

Every writer of llmbin goes through `atomic_path`: the bytes go to a temporary file beside the target (same
directory, so the rename cannot cross file systems), are flushed to disk, renamed over the target, and the
directory entry is flushed too. A crash at any moment leaves the old file or the new one, never half of one;
a killed process leaves at most a `.NAME.PID.tmp` file, which `remove_stale_temp_files` clears.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import LlmbinError


def cache_root() -> Path:
    """llmbin's cache (converted models, fetched files, built kernels): $LLMBIN_CACHE, default ~/.cache/llmbin."""
    return Path(os.environ.get("LLMBIN_CACHE", Path.home() / ".cache" / "llmbin"))


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a directory's entry to disk (a no-op where the platform cannot open directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path to write `path`'s new content to; on success it replaces `path` durably."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if disk_full(exc):
            raise LlmbinError(f"no space left on the device while writing {path}; free some space (or write "
                              "elsewhere) and rerun") from None
        raise


@contextmanager
def disk_full_as_error(where: str | Path):
    """Inside the block, a full disk (however a library reports it) becomes one LlmbinError naming `where`."""
    try:
        yield
    except LlmbinError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is ENOSPC
        if disk_full(exc):
            raise LlmbinError(f"no space left on the device while writing {where}; free some space (or write "
                              "elsewhere) and rerun") from None
        raise


def disk_full(exc: BaseException) -> bool:
    """ENOSPC, as an OSError or inside another library's error (safetensors reports it as a message)."""
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def publish_directory(work: Path, target: Path) -> None:
    """Rename a finished directory into place, its files and entries on disk first (target must not exist)."""
    for item in Path(work).rglob("*"):
        if item.is_file():
            fsync_path(item)
    fsync_path(work)
    os.replace(work, target)
    fsync_path(Path(target).parent)


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete `.NAME.PID.tmp` files of processes that no longer run (a killed writer's leftovers)."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest(obj) -> str:
    """16 hex digits naming a JSON-like object; tensors inside it count by their bytes, dtype and shape."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_tensor_name).encode()).hexdigest()[:16]


def _tensor_name(value) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h = hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return f"tensor {t.dtype} {list(t.shape)} {h.hexdigest()}"
    return str(value)


def save_tensors(path: str | Path, tensors: dict, info: dict) -> None:
    """Tensors and a JSON-able `info` in one safetensors file, atomically (no pickle: loading runs no code)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"info": json.dumps(info)})


def load_tensors(path: str | Path) -> tuple[dict, dict]:
    """-> (tensors, info) of a save_tensors file; a damaged one raises LlmbinError naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("info", "{}"))
            return {k: f.get_tensor(k) for k in f.keys()}, info
    except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds; all mean "damaged"
        raise LlmbinError(f"{path} is damaged ({str(exc).splitlines()[0][:100]}); delete it and rerun") from None
