"""The `calibration:` and `pipeline:` recipe sections: which text calibrates, and how the layer-by-layer run goes."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import LlmbinError


@dataclass
class Calibration:
    dataset: str = "wikitext2"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    selfgen_share: float = 0.0  # this share of the windows written by the full-precision model itself (data/selfgen)

    def __post_init__(self):
        if not 0 <= self.selfgen_share <= 1:
            raise LlmbinError(f"calibration.selfgen_share must be in [0, 1], not {self.selfgen_share}")


STREAM_CHOICES = ("auto", "true", "false")


def stream_setting(value) -> str:
    """pipeline.stream as one of auto | true | false (YAML gives bools, --set gives strings)."""
    text = str(value).lower()
    text = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(text, text)
    if text not in STREAM_CHOICES:
        raise LlmbinError(f"pipeline.stream must be auto, true or false, not {value!r}")
    return text


@dataclass
class PipelineOptions:
    true_sequential: bool = False
    batch_size: int = 8  # calibration windows per forward call; results do not depend on it
    activation_cache: str = "cpu"  # cpu | disk
    device: str = "cpu"
    skip: list = field(default_factory=list)  # module-name substrings left in full precision
    stream: bool | str = "auto"  # load decoder layers one at a time from safetensors: true | false | auto (when the
    #                              whole float model would not fit in the memory available: recipe/stream_choice.py)
    memory_budget_mb: int = 0  # refuse before starting when the pre-flight estimate of the run's own memory (beyond the
    # process's libraries) exceeds it (0: no check)
    embeddings: str = "int5"  # token embeddings (and a tied head): int2..int8 [-row|-gG] | none (calibrate/embeddings.py)
    head: str = "same"  # output head of an untied model: same (as embeddings) | int8 | int4 | ... | none
    head_windows: int = 32  # calibration windows whose final hidden states give the head's Hessian
    sensitivity: bool = False  # log each linear's relative output error on its calibration inputs (llmbin compare)

    def __post_init__(self):
        stream_setting(self.stream)  # refuses anything but auto / true / false
        if self.activation_cache not in ("cpu", "disk"):
            raise LlmbinError(f"pipeline.activation_cache must be cpu or disk, not {self.activation_cache!r}")
