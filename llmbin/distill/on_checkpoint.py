"""`llmbin distill CHECKPOINT -o OUT`: distillation of a finished packed checkpoint against its full-precision
teacher, written as a copy of the checkpoint with the trained tensors. Resumable state lives in OUT's work area."""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from ..calibrate.quant_log import QuantLog
from ..checkpoint.reader import load_checkpoint, read_quant_config
from ..data.sources import HUB_TEXTS
from ..errors import LlmbinError
from ..host.files import publish_directory
from ..models.loading import load_config
from ..nn import QuantLinear, TiedQuantHead
from .memory_estimate import check_memory, describe, estimate_memory
from .notes import card_notes, config_entry
from .options import DistillOptions
from .shards import rewrite_float_tensors
from .stage import Stage
from .teacher import cached_teacher_targets, load_teacher
from .work_files import STATE_FILE, clear_state


def _check_dataset(dataset: str | None, options: DistillOptions, path: Path) -> None:
    if options.data != "calibration":
        return
    if not dataset:
        raise LlmbinError(f"{path} does not record its calibration text; pass --dataset TEXT (or --set distill.data=selfgen)")
    if dataset != "selfgen" and dataset not in HUB_TEXTS and not Path(dataset).exists():
        raise LlmbinError(f"the distillation text {dataset!r} does not exist; pass --dataset TEXT "
                          "(or --set distill.data=selfgen)")


def resolve_teacher(path: Path, qc: dict, teacher: str | None) -> str:
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


def frozen_packed_head(model):
    """The packed output head (a QuantLinear, or a TiedQuantHead on a packed embedding), or None when it is float."""
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


def dense_head_bytes(head) -> int:
    """The float32 copy `differentiable_head` makes of a packed head."""
    if head is None:
        return 0
    packed = head.embedding if hasattr(head, "embedding") else head
    return 4 * packed.in_features * packed.out_features


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
                   if isinstance(m, QuantLinear) and m is not head}
        if not formats:
            raise LlmbinError(f"{path} has no packed linears to distill")
        dense = sum(4 * f.out_features * f.in_features for f in formats.values())
        est = estimate_memory(model, formats, options, dense + sum(p.numel() * 4 for p in model.parameters()), device,
                              extra=dense_head_bytes(head))
        log.note(describe(est))
        check_memory(est, memory_budget_mb)
        teacher_model = None
        if (path / "tokenizer_config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(path)
        else:
            teacher_model, tokenizer = load_teacher(teacher_ref, device)
        windows, cache = cached_teacher_targets(teacher_ref, tokenizer, dataset, options, device, log, work, teacher_model)
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
        rewrite_float_tensors(work, run.formats)
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
    publish_directory(work, out)
    return DistillOutcome(model, run.formats, run.stats, out)
