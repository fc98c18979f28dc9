"""Packed token embeddings and the output head that may share them.

QuantEmbedding holds a [vocab, dim] matrix in the `uniform` integer layout (qweight, scales, zeros). Looking
tokens up unpacks and dequantizes only the gathered rows; `project` multiplies by the matrix through the packed
kernels, so a tied output head (TiedQuantHead: it owns no tensors, nothing of it is saved) needs no second copy.
"""
from __future__ import annotations

import torch
from torch import nn

from ..formats.bits import unpack_codes
from .packed import PackedMatrix


class QuantEmbedding(PackedMatrix):
    def __init__(self, meta: dict, padding_idx: int | None = None, out_dtype: torch.dtype = torch.float32,
                 embed_scale: float = 1.0, device=None):
        super().__init__(meta, device)
        self.num_embeddings, self.embedding_dim = meta["out_features"], meta["in_features"]
        self.padding_idx = padding_idx
        self.out_dtype = out_dtype  # the vectors are returned in the model's compute dtype
        self.embed_scale = embed_scale  # what the replaced module multiplied rows by (Gemma: sqrt(hidden))

    @classmethod
    def from_format(cls, fmt, padding_idx: int | None = None, out_dtype: torch.dtype = torch.float32,
                    embed_scale: float = 1.0, lut: bool = True) -> "QuantEmbedding":
        """lut: let the cpu lookup-table kernel run the matrix as a head (meta 'lut', kernels/cpu)."""
        module = cls({**fmt.meta(), "lut": lut}, padding_idx, out_dtype, embed_scale)
        module.load_format(fmt)
        return module

    def _apply(self, fn, recurse=True):
        self.out_dtype = fn(torch.empty(0, dtype=self.out_dtype)).dtype  # follow .to(dtype) / .half() of the model
        return super()._apply(fn, recurse)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        bits, g, dim = self.meta["bits"], self.meta["group_size"], self.embedding_dim
        flat = ids.reshape(-1)
        codes = unpack_codes(self.qweight[flat], bits, dim).to(torch.float32)
        scales = self.scales[flat].float().repeat_interleave(g, dim=1)[:, :dim]
        zeros = self.zeros[flat].float().repeat_interleave(g, dim=1)[:, :dim]
        rows = (codes - zeros) * scales  # float32, the same arithmetic as UniformFormat.dequantize
        if self.embed_scale != 1.0:
            rows = rows * self.embed_scale
        return rows.to(self.out_dtype).view(*ids.shape, dim)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., dim] -> logits [..., vocab]: the matrix (without embed_scale) used as an output head."""
        return self.matmul(x)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, format={self.meta['format']}, "
                f"bits={self.meta['bits']}, group_size={self.meta['group_size']}")


class TiedQuantHead(nn.Module):
    """Output head tied to a QuantEmbedding: logits = x E^T through the embedding's packed tensors."""

    def __init__(self, embedding: QuantEmbedding):
        super().__init__()
        self._tied = [embedding]  # a list, so the embedding is not registered (and saved) a second time
        self.in_features, self.out_features = embedding.embedding_dim, embedding.num_embeddings

    @property
    def embedding(self) -> QuantEmbedding:
        return self._tied[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding.project(x)

    def extra_repr(self) -> str:
        return f"tied to the packed input embedding ({self.out_features} x {self.in_features})"


def lookup_scale(module: nn.Module) -> float | None:
    """What a token-embedding module multiplies looked-up rows by: 1 for nn.Embedding, embed_scale for the
    scaled embeddings of Gemma-like models, None for any other forward (left unquantized: its math is unknown)."""
    if type(module).forward is nn.Embedding.forward:
        return 1.0
    if type(module).__name__.endswith("ScaledWordEmbedding") and hasattr(module, "embed_scale"):
        scalar = getattr(module, "scalar_embed_scale", None)  # a plain float: readable while loading on meta
        return float(scalar if scalar is not None else module.embed_scale)
    return None


def untie_packed(model) -> None:
    """A packed matrix shared by embedding and head is shared by reference; transformers' tie_weights() (lm-eval
    calls one, and it recomputes the mapping from the class's `_tied_weights_keys`) must not look for the float
    `weight` parameters that no longer exist."""
    model._tied_weights_keys = None
    model.all_tied_weights_keys = {}
