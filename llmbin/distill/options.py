"""The `distill:` recipe section (and `llmbin distill --set KEY=VALUE`): what the distillation stage does."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import LlmbinError

LOSSES = ("entropy_kl", "kl")
DATA = ("calibration", "selfgen")
FILLS = ("none", "selfgen")
PRECISIONS = ("auto", "bf16", "fp32")
CHECKPOINTING = ("auto", "always", "never")
ACTIVATIONS_BUDGET = 2 * 2**30  # bytes of kept activations above which checkpointing=auto recomputes layers


@dataclass
class DistillOptions:
    enabled: bool = False  # in a recipe: run the stage after the last layer (llmbin distill ignores it)
    loss: str = "entropy_kl"  # entropy_kl (deviation-aware: weight 1 + gamma H_t / log V) | kl (plain)
    entropy_weight: float = 1.0  # gamma of the entropy_kl weighting
    ce_weight: float = 0.0  # > 0 adds ce_weight * causal-LM cross-entropy on the window's own next tokens
    temperature: float = 1.0
    topk: int = 128  # teacher distribution cached as its top-k log-probabilities + the rest's total mass
    data: str = "calibration"  # calibration (the calibration text) | selfgen (sampled from the teacher)
    selfgen_share: float = 0.0  # with data=calibration: this share of the windows sampled from the teacher instead
    fill: str = "none"  # with data=calibration, when the text holds fewer than nsamples windows: none (train on
    #                     what it holds) | selfgen (the teacher writes the missing windows)
    nsamples: int = 64  # training windows
    seqlen: int = 512  # tokens per window
    eval_nsamples: int = 4  # held-out windows, disjoint from the training ones
    epochs: int = 1
    batch_size: int = 1  # windows per Adam step
    lr: float = 5e-3  # Adam step on the relative changes of the continuous tensors (warm-up, then cosine decay to 0)
    warmup: float = 0.1  # share of the steps over which the step size rises linearly from 0
    eval_every: int = 16  # steps between held-out evaluations (the best state is kept)
    save_every: int = 8  # steps between resumable state saves (0: never)
    seed: int = 0
    precision: str = "auto"  # the step's matmuls: auto (bf16 where the device multiplies it natively) | bf16 | fp32
    checkpointing: str = "auto"  # recompute each layer in the backward: auto (when keeping every layer's activations
    #                              would pass ACTIVATIONS_BUDGET) | always | never

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise LlmbinError(f"distill.loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.data not in DATA:
            raise LlmbinError(f"distill.data must be calibration or selfgen, not {self.data!r}")
        if self.fill not in FILLS:
            raise LlmbinError(f"distill.fill must be none or selfgen, not {self.fill!r}")
        if self.checkpointing not in CHECKPOINTING:
            raise LlmbinError(f"distill.checkpointing must be auto, always or never, not {self.checkpointing!r}")
        if self.precision not in PRECISIONS:
            raise LlmbinError(f"distill.precision must be auto, bf16 or fp32, not {self.precision!r}")
        for key in ("nsamples", "seqlen", "eval_nsamples", "epochs", "batch_size", "topk", "eval_every"):
            if getattr(self, key) < 1:
                raise LlmbinError(f"distill.{key} must be >= 1, not {getattr(self, key)}")
        if self.seqlen < 2:
            raise LlmbinError(f"distill.seqlen must be >= 2, not {self.seqlen}")
        if not 0 <= self.selfgen_share <= 1:
            raise LlmbinError(f"distill.selfgen_share must be in [0, 1], not {self.selfgen_share}")
        if not 0 <= self.warmup < 1:
            raise LlmbinError(f"distill.warmup must be in [0, 1), not {self.warmup}")
        if self.temperature <= 0 or self.lr <= 0 or self.ce_weight < 0 or self.entropy_weight < 0:
            raise LlmbinError("distill.temperature and distill.lr must be > 0, distill.ce_weight and "
                              "distill.entropy_weight >= 0")

    @property
    def gamma(self) -> float:
        return self.entropy_weight if self.loss == "entropy_kl" else 0.0

    def steps(self, n_train: int) -> int:
        return self.epochs * -(-n_train // self.batch_size)
