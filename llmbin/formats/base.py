"""Packed weight formats: the on-disk representation of one quantized linear.

A format is separate from the method that produced it. Every format can
- list the tensors it stores (`tensors()`), with a JSON `meta()` that is enough to
  know every stored tensor's name, dtype and shape before reading it (strict loading),
- rebuild itself from those tensors (`from_tensors`), and
- `dequantize()` to a dense float32 weight: the correctness oracle for every kernel.

`float_fields` names the continuous (float16-stored) tensors and how they act: "scale" (multiplies
the weight, keeps its sign) or "shift" (adds to it). `dequantize` is a differentiable torch function
of them, so the distillation stage (llmbin/distill) can train them with every integer tensor
(codes, planes, masks, permutations, zero points) frozen, via `with_floats`.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import ClassVar

import torch

FORMATS: dict[str, type["PackedFormat"]] = {}


def register_format(cls):
    FORMATS[cls.name] = cls
    return cls


class FormatError(ValueError):
    """A packed tensor set that does not match its declared layout."""


class PackedFormat(ABC):
    name: ClassVar[str]
    version: ClassVar[int]  # the version this llmbin writes
    readable_versions: ClassVar[tuple[int, ...]] = ()  # older versions it still reads (default: only `version`)
    float_fields: ClassVar[dict[str, str]] = {}  # continuous float16 tensors -> "scale" | "shift"
    out_features: int
    in_features: int
    paper_bits: float

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """The packed tensors, as stored on disk (names relative to the module)."""

    @abstractmethod
    def meta(self) -> dict:
        """JSON-serialisable description; with it, `expected_tensors` knows every shape."""

    @classmethod
    @abstractmethod
    def expected_tensors(cls, meta: dict) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """name -> (dtype, shape) that `meta` promises."""

    @classmethod
    @abstractmethod
    def from_tensors(cls, meta: dict, tensors: dict[str, torch.Tensor]) -> "PackedFormat":
        ...

    @abstractmethod
    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        """Dense weight [out_features, in_features]."""

    def floats(self) -> dict[str, torch.Tensor]:
        """The continuous tensors this instance has (optional ones may be None and are left out)."""
        return {n: getattr(self, n) for n in self.float_fields if getattr(self, n) is not None}

    def with_floats(self, **tensors: torch.Tensor) -> "PackedFormat":
        """The same codes with other continuous tensors (any float dtype; gradients flow through dequantize)."""
        unknown = set(tensors) - set(self.floats())
        if unknown:
            raise ValueError(f"{self.name} has no continuous tensor(s) {sorted(unknown)}")
        return dataclasses.replace(self, **tensors)

    def all_in_bits(self) -> float:
        """Every stored bit of this module divided by the number of weights it replaces."""
        stored = sum(t.numel() * t.element_size() * 8 for t in self.tensors().values())
        return stored / (self.out_features * self.in_features)

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def check_tensors(fmt_cls: type[PackedFormat], meta: dict, tensors: dict[str, torch.Tensor], where: str):
    """Refuse a tensor set that is missing, has extra, or has wrongly shaped/typed tensors."""
    expected = fmt_cls.expected_tensors(meta)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise FormatError(f"{where}: missing packed tensor(s) {', '.join(missing)}; the checkpoint is incomplete, re-export it")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise FormatError(f"{where}: unexpected packed tensor(s) {', '.join(extra)} for format {fmt_cls.name}")
    for name, (dtype, shape) in expected.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            raise FormatError(
                f"{where}.{name}: stored {t.dtype} {tuple(t.shape)}, the layout needs {dtype} {tuple(shape)}; "
                "the checkpoint is corrupted or from another format version")


def format_from_meta(meta: dict) -> type[PackedFormat]:
    name = meta.get("format")
    if name not in FORMATS:
        raise FormatError(f"unknown packed format {name!r}; known: {', '.join(sorted(FORMATS))}")
    cls = FORMATS[name]
    readable = cls.readable_versions or (cls.version,)
    if meta.get("version") not in readable:
        raise FormatError(
            f"format {name} version {meta.get('version')} is not supported by this llmbin "
            f"(reads version {', '.join(map(str, readable))}); upgrade llmbin or re-quantize")
    return cls
