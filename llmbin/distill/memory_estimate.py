"""The distillation stage's pre-flight host memory: the larger of the teacher pass and the training pass."""
from __future__ import annotations

from ..errors import LlmbinError
from ..formats import PackedFormat
from .options import DistillOptions
from .stage import kept_activation_bytes, layer_stack, recomputes_layers


def estimate_memory(student, formats: dict[str, PackedFormat], options: DistillOptions, teacher_bytes: int) -> dict:
    """Host bytes of the stage: the larger of the teacher pass and the training pass (see the module docstring)."""
    params = sum(p.numel() * p.element_size() for p in student.parameters())
    dense = sum(4 * f.out_features * f.in_features for f in formats.values())  # fp32 weights the wrappers rebuild
    floats = sum(t.numel() * 4 for f in formats.values() for t in f.floats().values())
    tokens = options.batch_size * options.seqlen
    embedding = student.get_input_embeddings()  # nn.Embedding or a packed QuantEmbedding: both carry their shape
    hidden, vocab = embedding.embedding_dim, embedding.num_embeddings
    layers = layer_stack(student, formats)
    widest = max(f.out_features for f in formats.values()) if formats else hidden
    if recomputes_layers(student, formats, options):
        acts = tokens * 4 * (hidden * len(layers) + 12 * max(hidden, widest))  # checkpointed inputs + one layer live
    else:
        acts = kept_activation_bytes(student, formats, options)
    logits = 6 * tokens * vocab * 4  # logits, log-softmax, masked copy and their gradients
    cache = (options.nsamples + options.eval_nsamples) * options.seqlen * (8 * options.topk + 8)
    train = params + 2 * dense + 4 * floats + acts + logits + cache  # 2 x: the held weights and their graphs
    return {"teacher_pass": params + teacher_bytes + cache + 2 * logits, "training": train,
            "host": max(train, params + teacher_bytes + cache + 2 * logits)}


def check_memory(est: dict, budget_mb: int) -> None:
    if budget_mb and est["host"] > budget_mb * 2**20:
        raise LlmbinError(f"distillation pre-flight estimate {est['host'] / 2**30:.2f} GB exceeds the memory budget of "
                          f"{budget_mb} MB; lower distill.batch_size, distill.seqlen or distill.topk")
