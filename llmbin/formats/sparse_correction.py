"""A sparse correction added to a packed weight: PB-LLM's salient weights kept at high precision, in CSR form."""
from __future__ import annotations

from dataclasses import dataclass

import torch

SCALE_DTYPE = torch.float16


@dataclass
class SparseCorrection:
    values: torch.Tensor  # fp16 [nnz]
    colidx: torch.Tensor  # int16 or int32 [nnz], input-channel index in the ORIGINAL order
    rowptr: torch.Tensor  # int32 [N + 1]

    @staticmethod
    def from_dense(delta: torch.Tensor) -> "SparseCorrection":
        n, k = delta.shape
        rows, cols = torch.nonzero(delta, as_tuple=True)  # row-major order
        counts = torch.bincount(rows, minlength=n)
        rowptr = torch.zeros(n + 1, dtype=torch.int32)
        rowptr[1:] = torch.cumsum(counts, 0).to(torch.int32)
        col_dtype = torch.int16 if k <= 2**15 else torch.int32
        return SparseCorrection(delta[rows, cols].to(SCALE_DTYPE), cols.to(col_dtype), rowptr)

    def to_dense(self, n: int, k: int, dtype=torch.float32) -> torch.Tensor:
        counts = (self.rowptr[1:] - self.rowptr[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(n, device=counts.device), counts)
        dense = torch.zeros(n, k, dtype=dtype, device=counts.device)
        dense[rows, self.colidx.long()] = self.values.to(dtype)
        return dense
