"""What the two training loops (PTQ1.61's block training, its LoRA preprocessing) share."""
from __future__ import annotations

import torch

LOSS_WINDOWS = 16  # the loss logged before/after training is measured on the first 16 windows (a forward each)


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    """precision auto: bf16 on CUDA (where supported) and on CPUs with AMX tiles, else fp32; or bf16 | fp32."""
    if precision != "auto":
        return torch.bfloat16 if precision == "bf16" else torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return torch.bfloat16 if device.type == "cpu" and amx() else torch.float32
