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

from ..errors import LlmbinError

MAX_DIM = 1 << 24  # no real layer has a side this long; a larger one in metadata is corruption, not a model
FORMATS: dict[str, type["PackedFormat"]] = {}


def register_format(cls):
    FORMATS[cls.name] = cls
    return cls


class FormatError(LlmbinError, ValueError):
    """A packed tensor set, or its metadata, that does not match its declared layout (one line, like every
    LlmbinError; also a ValueError, as it always was)."""


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

    @classmethod
    def check_meta(cls, meta: dict, where: str = "module") -> None:
        """Refuse metadata whose fields are missing, of the wrong type or out of range (before any allocation)."""
        for key in ("out_features", "in_features"):
            meta_int(meta, key, where, 1, MAX_DIM)
        value = meta.get("paper_bits")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 64:
            raise FormatError(f"{where}: metadata paper_bits={value!r} is not a bit width; the checkpoint is corrupted")

    @classmethod
    def check_values(cls, meta: dict, tensors: dict[str, torch.Tensor], where: str = "module") -> None:
        """Refuse stored values that a kernel would read out of bounds or that break the layout's invariants:
        index ranges, popcounts, zero points; and non-finite continuous tensors. Shapes are check_tensors'."""
        for name in cls.float_fields:
            t = tensors.get(name)
            if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise FormatError(f"{where}.{name} holds NaN or infinite values; the checkpoint is corrupted, re-export it")

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
    """Refuse a tensor set that is missing, has extra, or has wrongly shaped/typed tensors, or values out of
    range (check_values)."""
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
    fmt_cls.check_values(meta, tensors, where)


def meta_int(meta: dict, key: str, where: str, low: int, high: int) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FormatError(f"{where}: metadata {key}={value!r} is not an integer in [{low}, {high}]; "
                          "the checkpoint is corrupted")
    return value


def meta_flag(meta: dict, key: str, where: str) -> bool:
    value = meta.get(key)
    if not isinstance(value, bool):
        raise FormatError(f"{where}: metadata {key}={value!r} is not true/false; the checkpoint is corrupted")
    return value


def check_index_range(t: torch.Tensor, low: int, high: int, what: str) -> None:
    """Every value of an index tensor in [low, high)."""
    if t.numel() and (int(t.min()) < low or int(t.max()) >= high):
        raise FormatError(f"{what} holds values outside [{low}, {high}) (min {int(t.min())}, max {int(t.max())}); "
                          "the checkpoint is corrupted, re-export it")


def check_padding_zero(words: torch.Tensor, bits: int, what: str) -> None:
    """The bits past the last packed column of each row are zero, as pack_codes writes them."""
    if bits % 32 == 0 or not words.numel():
        return
    last = words[..., -1].to(torch.int64) & 0xFFFFFFFF
    if bool((last >> (bits % 32)).any()):
        raise FormatError(f"{what} has bits set past its last column; the checkpoint is corrupted, re-export it")


def check_row_pointers(rowptr: torch.Tensor, nnz: int, what: str) -> None:
    """CSR row pointers: start at 0, never decrease, end at nnz."""
    r = rowptr.to(torch.int64)
    if int(r[0]) != 0 or int(r[-1]) != nnz or bool((r[1:] < r[:-1]).any()):
        raise FormatError(f"{what} are not row pointers from 0 to {nnz} (first {int(r[0])}, last {int(r[-1])}); "
                          "the checkpoint is corrupted, re-export it")


def format_from_meta(meta: dict) -> type[PackedFormat]:
    if not isinstance(meta, dict):
        raise FormatError(f"a module's format metadata is {type(meta).__name__}, not a mapping; the checkpoint is corrupted")
    name = meta.get("format")
    if not isinstance(name, str) or name not in FORMATS:
        raise FormatError(f"unknown packed format {name!r}; known: {', '.join(sorted(FORMATS))}")
    cls = FORMATS[name]
    readable = cls.readable_versions or (cls.version,)
    if meta.get("version") not in readable:
        raise FormatError(
            f"format {name} version {meta.get('version')} is not supported by this llmbin "
            f"(reads version {', '.join(map(str, readable))}); upgrade llmbin or re-quantize")
    return cls


def checked_format(meta: dict, where: str = "module") -> type[PackedFormat]:
    """format_from_meta, then every metadata field checked: what loading calls before it allocates anything."""
    cls = format_from_meta(meta)
    cls.check_meta(meta, where)
    return cls


@dataclasses.dataclass
class WrittenFormat:
    """What a streamed run keeps of a packed module once its tensors are in the checkpoint's work area: its
    description and sizes, enough for the checkpoint's config and bit counts, without the codes (which would
    otherwise pile up, ~1 byte a weight, for every layer of a model too large to hold)."""
    name: str
    meta_dict: dict
    out_features: int
    in_features: int
    paper_bits: float
    stored: int

    @classmethod
    def of(cls, fmt: "PackedFormat") -> "WrittenFormat":
        return cls(fmt.name, fmt.meta(), fmt.out_features, fmt.in_features, fmt.paper_bits, fmt.stored_bytes())

    def meta(self) -> dict:
        return dict(self.meta_dict)

    def stored_bytes(self) -> int:
        return self.stored
