"""The packed modules a quantized model holds: QuantLinear, QuantEmbedding and the head tied to it."""
from .embedding import QuantEmbedding, TiedQuantHead, lookup_scale, untie_packed
from .linear import QuantLinear
from .packed import PackedMatrix

__all__ = ["PackedMatrix", "QuantLinear", "QuantEmbedding", "TiedQuantHead", "lookup_scale", "untie_packed"]
