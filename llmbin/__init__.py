"""llmbin: post-training 1-2 bit quantization of Hugging Face causal LMs, packed and runnable.

    import llmbin
    qm = llmbin.quantize("smollm2-135m", llmbin.Recipe.default_for("ptq161"), out="smol-1.61bit")
    model, tokenizer = llmbin.load("smol-1.61bit")

Importing llmbin registers its transformers quantizer, so AutoModelForCausalLM.from_pretrained
reads llmbin checkpoints. It imports neither triton nor CUDA.
"""
__version__ = "0.1.0"

import os as _os

# OpenMP threads that spin while they wait for work turn a shared machine into a queue: two block-training
# runs side by side on 2 cores took 4x (libgomp's default) to 5.8x (ACTIVE) their time alone, 1.65x with passive
# waiting, which costs ~9% alone (benchmarks/results/shared-cores.md). Effective only when llmbin is imported
# before torch (the CLI always is); an explicit OMP_WAIT_POLICY wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .api import QuantizedModel, evaluate_ppl, load, quantize  # noqa: E402
from .errors import LlmbinError  # noqa: E402
from .integrations import hf_quantizer as _hf_quantizer  # noqa: E402,F401  (registers "llmbin" with transformers)
from .recipe import Recipe  # noqa: E402

__all__ = ["quantize", "load", "evaluate_ppl", "Recipe", "QuantizedModel", "LlmbinError", "__version__"]
