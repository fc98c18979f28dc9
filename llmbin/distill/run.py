"""The two ways into the distillation stage: at the end of `quantize` (recipe `distill:` section) and
`llmbin distill CHECKPOINT -o OUT` on a finished packed checkpoint.

Both first run the full-precision teacher once over the windows (cached top-k targets, loss.py) and
drop it, then train the student (stage.py). Resumable state lives in the output's work area.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import LlmbinError
from ..models.walk import set_submodule
from .data import DistillWindows, selfgen_windows, text_windows
from .loss import FORMULA, TeacherCache, build_cache
from .options import DistillOptions
from .stage import Stage, check_memory, estimate_memory, fingerprint

STATE_FILE = "distill-state.pt"
CACHE_FILE = "distill-teacher.pt"


def load_teacher(ref: str, device):
    from ..models.loading import load_model

    try:
        return load_model(ref, str(device))
    except (LlmbinError, OSError) as exc:
        raise LlmbinError(f"cannot load the full-precision teacher {ref!r} ({str(exc).splitlines()[0][:120]}); "
                          "pass --teacher MODEL (the model the checkpoint was quantized from)") from None


def teacher_targets(teacher_ref: str, tokenizer, dataset: str, options: DistillOptions, device, log,
                    state_dir: Path | None = None, teacher=None) -> tuple[DistillWindows, TeacherCache]:
    """Windows and the teacher's cached targets; with `state_dir`, reused from (and saved to) its cache file."""
    device = torch.device(device)
    if options.data == "calibration":
        if dataset == "selfgen":
            raise LlmbinError("the calibration data was selfgen; use --set distill.data=selfgen (or give --dataset)")
        windows = text_windows(dataset, tokenizer, options.nsamples, options.eval_nsamples, options.seqlen,
                               options.seed, log)
    else:
        windows = None  # sampled from the teacher below
    cache_file = None if state_dir is None else Path(state_dir) / CACHE_FILE
    if cache_file is not None and cache_file.exists():
        saved = torch.load(cache_file, weights_only=False)
        if windows is None or fingerprint([saved["key"]]) == fingerprint([_cache_key(teacher_ref, windows, options)]):
            log.note(f"distill: teacher targets reused from {cache_file}")
            return saved["windows"], TeacherCache(**saved["cache"])
    own = teacher is None
    if own:
        log.note(f"distill: loading the full-precision teacher {teacher_ref}")
        teacher, _ = load_teacher(teacher_ref, device)
    teacher.to(device).eval()
    if windows is None:
        windows = selfgen_windows(teacher, tokenizer, options.nsamples, options.eval_nsamples, options.seqlen,
                                  options.seed)
    from tqdm.auto import tqdm

    everything = windows.all()
    with tqdm(total=len(everything), desc="teacher pass", unit="window", disable=not getattr(log, "verbose", True)) as bar:
        cache = build_cache(teacher, everything, options.topk, options.temperature, options.batch_size, device, bar.update)
    if own:
        del teacher
    if cache_file is not None:
        tmp = cache_file.with_name(cache_file.name + ".tmp")
        torch.save({"key": _cache_key(teacher_ref, windows, options), "windows": windows, "cache": cache.state()}, tmp)
        os.replace(tmp, cache_file)
    return windows, cache


def _cache_key(teacher_ref, windows: DistillWindows, options: DistillOptions):
    return (teacher_ref, fingerprint([windows.all()]), len(windows.train), options.topk, options.temperature)


def card_notes(options: DistillOptions, stats: dict) -> str:
    weighting = (f"loss entropy_kl: {FORMULA}, gamma = {options.entropy_weight}: tokens on which the teacher is "
                 f"uncertain weigh up to (1 + gamma) times more (DB-LLM's deviation-aware distillation; the paper's "
                 f"exact weighting is not public, this is llmbin's choice)" if options.loss == "entropy_kl"
                 else f"loss kl: {FORMULA.replace('(1 + gamma * H_t / log V) * ', '')}")
    ce = f" plus {options.ce_weight} x causal-LM cross-entropy" if options.ce_weight > 0 else ""
    lines = [
        "Distillation against the full-precision model: every continuous tensor of the packed linears "
        f"({', '.join(stats.get('tensors', []))}) was trained with the codes, planes, masks and zero points frozen, "
        f"then rounded to float16 as stored. {weighting}{ce}; T = {options.temperature}, teacher top-{options.topk}. "
        f"{stats['train_windows'][0]} {options.data} windows of {options.seqlen} tokens, {options.epochs} epoch(s), "
        f"batch {options.batch_size}, Adam lr {options.lr} ({options.warmup:.0%} warm-up, cosine) on relative changes; held-out windows disjoint "
        "from the training ones.",
        f"Held-out distillation loss {stats['loss_before']:.4f} -> {stats['loss_after']:.4f} "
        f"({'trained tensors kept' if stats['kept'] else 'no gain: original tensors kept'}), {stats['steps']} steps.",
    ]
    return "\n".join(lines)


def config_entry(options: DistillOptions, stats: dict) -> dict:
    """What goes into quantization_config (deterministic: no timings)."""
    from dataclasses import asdict

    return {"options": asdict(options), "loss_before": stats["loss_before"], "loss_after": stats["loss_after"],
            "kept": stats["kept"], "steps": stats["steps"], "tensors": stats["tensors"]}


# -- at the end of quantize ----------------------------------------------------------------
def distill_quantized(model, results: dict, model_ref: str, tokenizer, dataset: str, options: DistillOptions,
                      device, log, state_dir: Path | None = None, memory_budget_mb: int = 0) -> dict:
    """Train the results' formats inside the fake-quant model; afterwards each linear's weight is its new format's
    dequantized value and each QuantResult holds the new format. -> the stage's statistics."""
    if any(p.device.type == "meta" for p in model.parameters()):
        raise LlmbinError("distill.enabled needs the whole quantized model in memory, but the layers were streamed "
                          "(pipeline.stream=true); drop --set pipeline.stream=true, or run `llmbin distill` on the "
                          "finished checkpoint")
    formats = {n: r.format for n, r in results.items()}
    teacher_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    est = estimate_memory(model, formats, options, teacher_bytes)
    log.note(f"distill pre-flight memory: {est['host'] / 2**30:.2f} GB host (teacher pass "
             f"{est['teacher_pass'] / 2**30:.2f} GB, training {est['training'] / 2**30:.2f} GB)")
    check_memory(est, memory_budget_mb)
    windows, cache = teacher_targets(model_ref, tokenizer, dataset, options, device, log, state_dir)
    linears = {n: model.get_submodule(n) for n in results}
    state = None if state_dir is None else Path(state_dir) / STATE_FILE
    run = Stage(model, formats, windows, cache, options, device, log, state).run()
    for name, linear in linears.items():
        results[name].format = run.formats[name]
        linear.weight.data = run.formats[name].dequantize().to(dtype=linear.weight.dtype)
        set_submodule(model, name, linear.to(linear.weight.device))
    model.to("cpu")
    return run.stats


def clear_state(state_dir: Path | None) -> None:
    if state_dir is not None:
        for name in (STATE_FILE, CACHE_FILE):
            (Path(state_dir) / name).unlink(missing_ok=True)


# -- on a finished checkpoint ----------------------------------------------------------------
def _check_dataset(dataset: str | None, options: DistillOptions, path: Path) -> None:
    from ..data.sources import HUB_TEXTS

    if options.data != "calibration":
        return
    if not dataset:
        raise LlmbinError(f"{path} does not record its calibration text; pass --dataset TEXT (or --set distill.data=selfgen)")
    if dataset != "selfgen" and dataset not in HUB_TEXTS and not Path(dataset).exists():
        raise LlmbinError(f"the distillation text {dataset!r} does not exist; pass --dataset TEXT "
                          "(or --set distill.data=selfgen)")


def resolve_teacher(path: Path, qc: dict, teacher: str | None) -> str:
    from ..models.loading import load_config

    ref = teacher or qc.get("provenance", {}).get("model")
    if not ref:
        raise LlmbinError(f"{path} does not name the model it was quantized from; pass --teacher MODEL")
    try:
        load_config(ref)
    except LlmbinError:
        where = "given by --teacher" if teacher else f"named in {path}'s provenance"
        raise LlmbinError(f"the full-precision teacher {ref!r} {where} cannot be found; pass --teacher MODEL "
                          "(the model the checkpoint was quantized from)") from None
    return ref


def _replace_float_tensors(work: Path, formats: dict) -> None:
    """Overwrite only the continuous tensors of the distilled modules in the copied shards (codes keep their bytes)."""
    from safetensors.torch import load_file, save_file

    from ..checkpoint import shard_files

    wanted = {f"{n}.{t}": v for n, f in formats.items() for t, v in f.tensors().items() if t in f.float_fields}
    for shard in shard_files(work):
        tensors = load_file(str(shard))
        hits = [k for k in tensors if k in wanted]
        if not hits:
            continue
        for key in hits:
            if tensors[key].shape != wanted[key].shape or tensors[key].dtype != wanted[key].dtype:
                raise LlmbinError(f"{key}: distilled tensor does not match the stored layout; the checkpoint changed")
            tensors[key] = wanted.pop(key).contiguous()
        tmp = shard.with_name(shard.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, shard)
    if wanted:
        raise LlmbinError(f"{len(wanted)} distilled tensor(s) (e.g. {next(iter(wanted))}) are missing from the shards")


def frozen_packed_head(model):
    """The packed output head (a QuantLinear, or a TiedQuantHead on a packed embedding), or None when it is float."""
    from ..nn import QuantLinear
    from ..nn_embedding import TiedQuantHead

    head = model.get_output_embeddings()
    return head if isinstance(head, (QuantLinear, TiedQuantHead)) else None


@contextmanager
def differentiable_head(model, head):
    """While the stage trains, a packed head runs as a frozen float linear holding exactly its dequantized matrix:
    the gradient must flow through it to the decoder, and the CPU kernels compute forward only. Afterwards the
    packed module is back in place, so the returned model is the checkpoint's."""
    if head is None:
        yield
        return
    packed = head.embedding if hasattr(head, "embedding") else head
    dense = torch.nn.Linear(packed.in_features, packed.out_features, bias=getattr(head, "bias", None) is not None)
    dense.weight = torch.nn.Parameter(packed.packed_format().dequantize(torch.float32), requires_grad=False)
    if dense.bias is not None:
        dense.bias = torch.nn.Parameter(head.bias.detach().float(), requires_grad=False)
    model.set_output_embeddings(dense)
    try:
        yield
    finally:
        model.set_output_embeddings(head)


class DistillOutcome:
    def __init__(self, model, formats, stats, path):
        self.model, self.formats, self.stats, self.path = model, formats, stats, path


def distill_checkpoint(path, out, teacher: str | None = None, dataset: str | None = None,
                       options: DistillOptions | None = None, device: str = "cpu", resume: bool = False,
                       overwrite: bool = False, verbose: bool = True, memory_budget_mb: int = 0) -> DistillOutcome:
    """Distill packed checkpoint `path` against its teacher into `out` (same layout, trained float tensors).

    The returned outcome's model is the trained student (its quantized linears are TrainableQuantLinear
    modules holding the rounded tensors: it computes what `out` holds).
    """
    from transformers import AutoTokenizer

    from ..checkpoint import load_checkpoint, read_quant_config
    from ..nn import QuantLinear
    from ..nn_embedding import QuantEmbedding
    from ..pipeline import QuantLog

    path, out, options = Path(path), Path(out), options or DistillOptions()
    options.check()
    qc = read_quant_config(path)
    teacher_ref = resolve_teacher(path, qc, teacher)
    dataset = dataset or qc.get("provenance", {}).get("calibration")
    _check_dataset(dataset, options, path)
    if out.exists() and not overwrite:
        raise LlmbinError(f"{out} already exists; choose another -o or pass --overwrite")
    if out.resolve() == path.resolve():
        raise LlmbinError("-o must differ from the input checkpoint")
    work = out.parent / f".{out.name}.distill-partial"
    if work.exists() and not resume:
        raise LlmbinError(f"an interrupted distillation left {work}; pass --resume to continue it, or delete it")
    if resume and not work.exists():
        raise LlmbinError(f"--resume: nothing to resume, {work} does not exist")
    work.mkdir(parents=True, exist_ok=True)
    log = QuantLog(verbose=verbose)
    try:
        model, _ = load_checkpoint(path)  # packed: small beside the teacher
        head = frozen_packed_head(model)  # packed embeddings/head stay as stored: frozen, not trained
        formats = {n: m.packed_format() for n, m in model.named_modules()
                   if isinstance(m, QuantLinear) and not isinstance(m, QuantEmbedding) and m is not head}
        if not formats:
            raise LlmbinError(f"{path} has no packed linears to distill")
        dense = sum(4 * f.out_features * f.in_features for f in formats.values())
        est = estimate_memory(model, formats, options, dense + sum(p.numel() * 4 for p in model.parameters()))
        log.note(f"distill pre-flight memory: {est['host'] / 2**30:.2f} GB host (teacher pass "
                 f"{est['teacher_pass'] / 2**30:.2f} GB, training {est['training'] / 2**30:.2f} GB)")
        check_memory(est, memory_budget_mb)
        teacher_model = None
        if (path / "tokenizer_config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(path)
        else:
            teacher_model, tokenizer = load_teacher(teacher_ref, device)
        windows, cache = teacher_targets(teacher_ref, tokenizer, dataset, options, device, log, work, teacher_model)
        del teacher_model
        with differentiable_head(model, head):
            run = Stage(model, formats, windows, cache, options, device, log, work / STATE_FILE).run()
    except LlmbinError:
        if not any(work.iterdir()):
            shutil.rmtree(work, ignore_errors=True)
        raise
    for item in path.iterdir():
        if item.is_file():
            shutil.copy2(item, work / item.name)
    if run.stats["kept"]:
        _replace_float_tensors(work, run.formats)
    config = json.loads((work / "config.json").read_text())
    config["quantization_config"]["distill"] = {**config_entry(options, run.stats), "teacher": teacher_ref,
                                                "data": dataset if options.data == "calibration" else "selfgen"}
    (work / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    with open(work / "README.md", "a") as f:
        f.write("\n## Distillation\n\n" + card_notes(options, run.stats) + "\n")
    with open(work / "quant_log.jsonl", "a") as f:
        f.write(log.jsonl())
    clear_state(work)
    if out.exists():
        shutil.rmtree(out)
    os.replace(work, out)
    return DistillOutcome(model, run.formats, run.stats, out)
