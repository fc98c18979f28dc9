"""llmbin: post-training 1-2 bit quantization of Hugging Face causal LMs, packed and runnable.

    import llmbin
    qm = llmbin.quantize("smollm2-135m", llmbin.Recipe.default_for("ptq161"), out="smol-1.61bit")
    model, tokenizer = llmbin.load("smol-1.61bit")

Importing llmbin registers its transformers quantizer, so AutoModelForCausalLM.from_pretrained reads llmbin
checkpoints. It imports neither triton nor lm-eval, builds no kernel and leaves the process's OpenMP settings
alone (tests/test_lean_import.py). The package is laid out along a model's way through it: docs/architecture.md.
"""
__version__ = "0.1.0"

import os as _os
import sys as _sys

# The `llmbin` command only (a library import changes nothing of its host process): OpenMP threads that spin while
# they wait for work turn a shared machine into a queue: two block-training runs side by side on 2 cores took 4x
# (libgomp's default) to 5.8x (ACTIVE) their time alone, 1.65x with passive waiting, which costs ~9% alone
# (benchmarks/results/shared-cores.md). It must be set before torch loads OpenMP, i.e. here, and an explicit
# OMP_WAIT_POLICY wins. "-m": `python -m llmbin.cli` while its parent package is imported.
if _os.path.basename(_sys.argv[0] if _sys.argv else "") in ("llmbin", "-m"):
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .api import QuantizedModel, evaluate_ppl, load, quantize  # noqa: E402
from .errors import LlmbinError  # noqa: E402
from .integrations import transformers as _transformers  # noqa: E402,F401  (registers "llmbin" with transformers)
from .recipe import Recipe  # noqa: E402

__all__ = ["quantize", "load", "evaluate_ppl", "Recipe", "QuantizedModel", "LlmbinError", "__version__"]
