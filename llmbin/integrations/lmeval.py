"""lm-evaluation-harness glue: run lm-eval tasks on a model object llmbin already loaded.

The model is wrapped in lm-eval's HFLM as an object (not a name), so a packed checkpoint is scored
through llmbin's QuantLinear kernels, exactly what ships. Tasks come from lm-eval's own task tree
or from local directories of YAML files (`include_path`); a directory is indexed first on its own
because indexing lm-eval's ~15k bundled tasks takes ~20 s.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
from pathlib import Path

from ..errors import LlmbinError

DEFAULT_SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}
HUB_HOST = "huggingface.co"


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def quiet_lm_eval(verbose: bool = False) -> None:
    # lm-eval warns about every default it fills in (aggregations, seeds, pre-built model): noise here
    logging.getLogger("lm_eval").setLevel(logging.INFO if verbose else logging.ERROR)


def builtin_task_dir(name: str) -> Path:
    """Directory of one of lm-eval's bundled tasks (e.g. wikitext), indexable on its own."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / name


def task_manager(names: list[str], include_path: str | list[str] | None = None):
    """A TaskManager that knows every name in `names`: the include path alone if it suffices (cached per process)."""
    paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path or [])
    return _task_manager(tuple(names), tuple(str(Path(p).resolve()) for p in paths))


@functools.lru_cache(maxsize=8)
def _task_manager(names: tuple[str, ...], paths: tuple[str, ...]):
    from lm_eval.tasks import TaskManager

    for p in paths:
        if not Path(p).is_dir():
            raise LlmbinError(f"--include-path {p} is not a directory of lm-eval task YAML files")
    if paths:
        local = TaskManager(include_path=[str(p) for p in paths], include_defaults=False)
        if all(n in local.all_tasks for n in names):
            return local
    manager = TaskManager(include_path=[str(p) for p in paths] or None)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        import difflib

        hints = sorted({m for n in unknown for m in difflib.get_close_matches(n, manager.all_tasks, 3, 0.7)})
        raise LlmbinError(f"unknown lm-eval task(s) {', '.join(unknown)}"
                          + (f" (close: {', '.join(hints)})" if hints else "")
                          + "; local tasks need --include-path DIR with their YAML files")
    return manager


def hub_reachable(timeout: float = 3.0) -> bool:
    if any(os.environ.get(k, "0") not in ("0", "") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def go_offline() -> None:
    """No network: make datasets/huggingface_hub read their caches only (fails fast instead of retrying ~30 s)."""
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets.config
    import huggingface_hub.constants

    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    if hasattr(datasets.config, "HF_DATASETS_OFFLINE"):
        datasets.config.HF_DATASETS_OFFLINE = True


def load_tasks(manager, names: list[str]) -> list:
    """Build each task (this reads its data) -> Task/Group objects; data that cannot be had -> LlmbinError."""
    from lm_eval.api.group import Group

    built = []
    for name in names:
        try:
            loaded = manager.load([name])
        except Exception as exc:  # noqa: BLE001  (datasets raises many types; the user needs one line)
            raise LlmbinError(f"lm-eval task {name!r}: its data cannot be loaded ({_first_line(exc)}); "
                              "offline, use a local task (dataset_path: json) with --include-path") from None
        if name in loaded["groups"] and isinstance(loaded["groups"][name], Group):
            built.append(loaded["groups"][name])
        elif name in loaded["tasks"]:
            built.append(loaded["tasks"][name])
        else:  # a tag: its member tasks
            built.extend(loaded["tasks"].values())
    return built


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def hflm(model, tokenizer, batch_size: int = 4, max_length: int | None = None, verbose: bool = False):
    from lm_eval.models.huggingface import HFLM

    quiet_lm_eval(verbose)

    if tokenizer is None:
        raise LlmbinError("lm-eval needs the model's tokenizer; this checkpoint has none (save one next to it)")
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def run_tasks(lm, manager, tasks: list, limit: int | float | None = None, num_fewshot: int | None = None,
              seeds: dict | None = None, bootstrap_iters: int = 100000) -> dict:
    """lm_eval.simple_evaluate on already built task objects, seeds given explicitly; -> lm-eval's results dict."""
    import lm_eval

    seeds = {**DEFAULT_SEEDS, **(seeds or {})}
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, num_fewshot=num_fewshot,
                                      limit=limit, bootstrap_iters=bootstrap_iters, log_samples=False, **seeds)
    if results is None:
        raise LlmbinError("lm-eval returned no results (non-zero rank?)")
    return results
