"""What the two training loops (PTQ1.61's block training, its LoRA preprocessing) share."""
from __future__ import annotations

import torch

LOSS_WINDOWS = 16  # the loss logged before/after training is measured on the first 16 windows (a forward each)


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    """precision auto: bf16 where the hardware multiplies bf16 natively (CUDA where supported; CPUs with AMX tiles or
    AVX512-BF16: 5x the float32 GEMM rate on a Zen 5), else fp32; or bf16 | fp32."""
    if precision != "auto":
        return torch.bfloat16 if precision == "bf16" else torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16_matmul() else torch.float32


def cpu_has_bf16_matmul() -> bool:
    """AMX tiles or AVX512-BF16 dot products: oneDNN's bf16 GEMMs run well above the float32 ones there."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
