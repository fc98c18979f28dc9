"""The tiny checkpoints the vLLM tests serve: one per quantization method and storage form, and one built by hand
whose every linear is another variant of the bitplane layout (q, k and v of one fused layer all different)."""
from __future__ import annotations

from pathlib import Path

import torch

# name -> (tiny source, method, method params, pipeline section)
CHECKPOINTS = {
    "gptq": ("llama", "gptq", {"bits": 2, "group_size": 32}, {"embeddings": "int4"}),  # uniform, packed tied matrix
    "rtn-untied": ("llama-untied", "rtn", {"bits": 4, "group_size": 64}, {"embeddings": "int8", "head": "int4"}),
    "ptq161": ("llama", "ptq161", {"epochs": 1, "bpw": 3.0}, {}),  # bitplane: salient mask, 4-bit block, in_scale
    "dbllm": ("llama", "dbllm", {"refit_iters": 1}, {"embeddings": "none"}),  # bitplane: 2 planes, groups of 64
    "pbllm-bitmap": ("llama", "pbllm", {"salient_form": "auto"}, {"embeddings": "none"}),  # masked
    "pbllm-sparse": ("llama", "pbllm", {"salient_form": "sparse"}, {"embeddings": "none"}),  # bitplane + CSR
    "qwen2": ("qwen2", "ptq161", {"epochs": 1, "bpw": 3.0}, {}),  # q/k/v biases
}

# (planes, group size, permutation: None | "index" | "mask", salient channels, in_scale, out_scale, sparse, version)
VARIANTS = [
    (2, 32, None, 0, False, False, False, 2),  # DB-LLM-like
    (1, 200, "index", 0, True, True, False, 2),  # permuted, both scales, one group
    (1, 112, "mask", 16, True, False, False, 2),  # PTQ1.61-like: salient mask storage
    (1, 64, None, 0, False, True, True, 2),  # sparse correction
    (3, 32, "index", 8, False, False, False, 1),  # version 1: int32 perm, float16 salient zero points
    (2, 16, "index", 0, True, False, True, 2),  # permuted over several groups, sparse
    (4, 128, None, 0, False, True, False, 2),
]


def _binarize(w: torch.Tensor, planes: int, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Residual binarization per group: w ~ sum_p A_p B_p + C, B in {0, 1}."""
    n, k = w.shape
    ng = -(-k // g)
    padded = torch.nn.functional.pad(w, (0, ng * g - k)).view(n, ng, g)
    mu = padded.mean(-1)
    residual, bits, scales = padded - mu[..., None], [], []
    offsets = mu.clone()
    for _ in range(planes):
        alpha = residual.abs().mean(-1).clamp_min(1e-4)
        b = residual > 0
        bits.append(b.flatten(1)[:, :k])
        scales.append(2 * alpha)
        offsets -= alpha
        residual = residual - (2 * alpha[..., None] * b - alpha[..., None])
    return torch.stack(bits), torch.stack(scales).half(), offsets.half()


def bitplane_variant(w: torch.Tensor, spec, seed: int):
    from llmbin.formats import BitPlaneFormat, SparseCorrection
    from llmbin.formats.bitplane import mask_order

    planes, g, perm_kind, k_sal, in_scale, out_scale, sparse, _ = spec
    gen = torch.Generator().manual_seed(seed)
    n, k = w.shape
    perm = None
    if perm_kind == "index":
        perm = torch.randperm(k, generator=gen)
    elif perm_kind == "mask":
        salient = torch.zeros(k, dtype=torch.bool)
        salient[torch.randperm(k, generator=gen)[:k_sal]] = True
        perm = mask_order(salient)
    order = torch.arange(k) if perm is None else perm
    s_in = (0.5 + torch.rand(k, generator=gen)).half() if in_scale else None
    s_out = (0.5 + torch.rand(n, generator=gen)).half() if out_scale else None
    target = w.clone()
    if s_in is not None:
        target = target / s_in.float()
    if s_out is not None:
        target = target / s_out.float()[:, None]
    k_bin = k - k_sal
    bits, scales, offsets = _binarize(target[:, order[:k_bin]], planes, min(g, k_bin))
    salient = {}
    if k_sal:
        block = w[:, order[k_bin:]]
        lo, hi = block.min(1).values, block.max(1).values
        scale = ((hi - lo) / 15).clamp_min(1e-4)
        zero = (-lo / scale).round().clamp(0, 15)
        codes = (block / scale[:, None] + zero[:, None]).round().clamp(0, 15).to(torch.uint8)
        salient = dict(salient_codes=codes, salient_scale=scale.half(), salient_zero=zero.half())
    fmt = BitPlaneFormat(planes=bits, scales=scales, offsets=offsets, group_size=min(g, k_bin), in_features=k,
                         paper_bits=float(planes), in_scale=s_in, out_scale=s_out,
                         perm=None if perm is None else perm.to(torch.int32), **salient)
    if sparse:
        error = w - fmt.dequantize()
        keep = error.abs() >= error.abs().flatten().quantile(0.95)
        fmt.sparse = SparseCorrection.from_dense(torch.where(keep, error, 0.0))
    return fmt


def write_bitplane_variants(source: Path, out: Path) -> None:
    """Every decoder linear of the tiny tied Llama as another bitplane variant; embeddings stay float."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmbin.checkpoint.version import FORMAT_VERSION
    from llmbin.models.walk import set_submodule
    from llmbin.nn import QuantLinear

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    modules = {}
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    for i, name in enumerate(names):
        spec = VARIANTS[(i + 3 * (i // len(VARIANTS))) % len(VARIANTS)]  # q, k, v differ; layers differ
        fmt = bitplane_variant(model.get_submodule(name).weight.detach().float(), spec, seed=i)
        meta, tensors = fmt.meta(), fmt.tensors()
        if spec[-1] == 1:  # as version 1 wrote it
            meta = {k: v for k, v in {**meta, "version": 1}.items() if k != "perm_storage"}
            tensors["salient_zero"] = tensors["salient_zero"].half()
        module = QuantLinear(meta)
        for tensor_name, tensor in tensors.items():
            getattr(module, tensor_name).copy_(tensor)
        set_submodule(model, name, module)
        modules[name] = meta
    model.config.quantization_config = {"quant_method": "llmbin", "format_version": FORMAT_VERSION, "modules": modules}
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
