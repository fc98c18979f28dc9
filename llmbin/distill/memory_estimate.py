"""The distillation stage's pre-flight host memory: the larger of the teacher pass and the training pass, beside
the process itself (interpreter and libraries: its resident memory not held by the student's tensors).

Training holds the student's tensors (packed codes, unquantized weights), five float32 copies of every trained
tensor (base, change, gradient, Adam's two moments), what each trainable linear holds through a step (its weight
in the compute dtype and its format as loaded: `trainable.step_bytes`), one linear's backward (its weight rebuilt, the
intermediates, the gradient), the activations kept for the backward, the logits and their gradients, the teacher's
cached targets, and `extra` (a float copy of a packed head the step differentiates through).
The teacher pass holds the student, the float teacher, the cache and two batches of logits.
"""
from __future__ import annotations

from ..errors import LlmbinError
from ..formats import PackedFormat
from ..host.memory import process_rss_bytes, resident_tensor_bytes
from ..methods.solvers.training import compute_dtype
from .options import DistillOptions
from .stage import kept_activation_bytes, layer_stack, recomputes_layers
from .trainable import step_bytes


def estimate_memory(student, formats: dict[str, PackedFormat], options: DistillOptions, teacher_bytes: int,
                    device="cpu", extra: int = 0) -> dict:
    """Host bytes: `teacher_pass`, `training`, `process` and `host` (the larger pass plus the process)."""
    import torch

    resident = resident_tensor_bytes(student)
    dtype_bytes = compute_dtype(torch.device(device), options.precision).itemsize
    floats = sum(t.numel() * 4 for f in formats.values() for t in f.floats().values())
    linears = sum(step_bytes(f, dtype_bytes) for f in formats.values())
    widest = max((f.out_features * f.in_features for f in formats.values()), default=0)
    backward = 5 * widest * dtype_bytes  # one linear's rebuilt weight, its intermediates and gradient
    tokens = options.batch_size * options.seqlen
    embedding = student.get_input_embeddings()  # nn.Embedding or a packed QuantEmbedding: both carry their shape
    hidden, vocab = embedding.embedding_dim, embedding.num_embeddings
    layers = layer_stack(student, formats)
    wide = max([hidden] + [f.out_features for f in formats.values()])
    if recomputes_layers(student, formats, options):
        acts = tokens * 4 * (hidden * len(layers) + 12 * wide)  # checkpointed inputs + one layer live
    else:
        acts = kept_activation_bytes(student, formats, options)
    logits = 6 * tokens * vocab * 4  # logits, log-softmax, masked copy and their gradients
    cache = (options.nsamples + options.eval_nsamples) * options.seqlen * (8 * options.topk + 8)
    train = resident + extra + 5 * floats + linears + backward + acts + logits + cache
    teacher_pass = resident + teacher_bytes + cache + 2 * logits
    process = max(0, process_rss_bytes() - resident)
    return {"teacher_pass": teacher_pass, "training": train, "process": process,
            "host": max(train, teacher_pass) + process}


def describe(est: dict) -> str:
    return (f"distill pre-flight memory: {est['host'] / 2**30:.2f} GB peak resident = process "
            f"{est['process'] / 2**30:.2f} GB + the larger of the teacher pass {est['teacher_pass'] / 2**30:.2f} GB "
            f"and training {est['training'] / 2**30:.2f} GB")


def check_memory(est: dict, budget_mb: int) -> None:
    if budget_mb and est["host"] > budget_mb * 2**20:
        raise LlmbinError(f"distillation pre-flight estimate {est['host'] / 2**30:.2f} GB exceeds the memory budget of "
                          f"{budget_mb} MB; lower distill.batch_size, distill.seqlen or distill.topk")
