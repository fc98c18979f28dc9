"""A quantized linear whose continuous tensors train while its codes stay frozen.

Each float tensor T0 of the packed format (`PackedFormat.float_fields`) becomes
    T = T0 * (1 + d)         for a "scale" (relative change: one learning rate fits every layer, signs kept)
    T = T0 + d * mean|T0|    for a "shift" (offsets may be 0 or change sign; stepped in the tensor's own units)
with d an fp32 parameter starting at 0. The forward dequantizes the format with those tensors
(a differentiable function of them) and applies it as a dense linear: y = x W(T)^T + b.
`rounded_format()` gives the packed format with T rounded to float16 (the stored precision), and
`load_rounded()` resets T0 to those rounded values with d = 0, so the module then computes exactly
what the packed checkpoint holds.

Speed (the stage runs hundreds of steps): a bit-plane format is rebuilt in its stored column order from its planes
(viewed as int8), and the input's columns are gathered into that order instead of the weight's being scattered back
(`_StoredOrder`); and `hold()` builds each weight once per training step, so the checkpointed layers' recomputation
reuses it instead of dequantizing again.

Memory: a held weight's graph would keep weight-sized intermediates (the weight before each per-row or per-column
scale) for every linear until the step's backward: ~2 more weights per linear, 5.6 GB on a 1.5B model. So the held
weight is built without a graph into a buffer kept across steps, and once the backward has its gradient the weight
is rebuilt with its graph, one linear at a time, to carry it to the float tensors. Outside `hold()` the weight is
built under activation checkpointing, to the same effect.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..formats import PackedFormat
from ..formats.bitplane import BitPlaneFormat


class TrainableQuantLinear(nn.Module):
    def __init__(self, fmt: PackedFormat, bias: torch.Tensor | None, device="cpu", dtype=torch.float32):
        super().__init__()
        self.kinds = {n: fmt.float_fields[n] for n in fmt.floats()}
        self.stored_dtypes = {n: t.dtype for n, t in fmt.floats().items()}
        self.frozen = _format_to(fmt, device)  # codes, planes, masks, zero points: never change
        self.deltas = nn.ParameterDict()
        for name, tensor in fmt.floats().items():
            self.register_buffer(f"base_{name}", tensor.detach().float().to(device))
            self.deltas[name] = nn.Parameter(torch.zeros(tensor.shape, device=device))
        self.register_buffer("bias", None if bias is None else bias.detach().float().to(device))
        self.in_features, self.out_features = fmt.in_features, fmt.out_features
        self.device = torch.device(device)
        self.dtype = dtype  # the product's dtype (bf16 under the stage's autocast)
        self.stored_order = _StoredOrder(self.frozen, dtype) if _StoredOrder.fits(fmt) else None
        self.held = None
        self.buffer = None  # the held weight, reused from step to step (hold())

    def base(self, name: str) -> torch.Tensor:
        return getattr(self, f"base_{name}")

    def floats(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, kind in self.kinds.items():
            base, d = self.base(name), self.deltas[name]
            if kind == "scale":
                out[name] = base * (1 + d)
            else:
                out[name] = base + d * base.abs().mean().clamp(min=1e-8)
        return out

    def weight(self) -> torch.Tensor:
        return self.frozen.with_floats(**self.floats()).dequantize(torch.float32)

    def product_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W in the column order the product uses, the input's column order or None for the natural one)."""
        build = self._dense_weight if self.stored_order is None else self.stored_order.weight
        floats = self.floats()
        if torch.is_grad_enabled() and any(t.requires_grad for t in floats.values()):
            w = checkpoint(build, floats, use_reentrant=False)
        else:
            w = build(floats)
        return w, None if self.stored_order is None else self.stored_order.order

    def _dense_weight(self, floats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.frozen.with_floats(**floats).dequantize(torch.float32).to(self.dtype)

    def compute_in(self, dtype: torch.dtype) -> None:
        """The product's dtype from now on (the stage trains in bf16 and hands back a float32 model)."""
        self.dtype, self.buffer = dtype, None
        if self.stored_order is not None:
            self.stored_order = _StoredOrder(self.frozen, dtype)

    def hold(self) -> None:
        """Build the weight once for a whole training step (its forward, recomputation and backward).

        The weight goes into a buffer kept from step to step (a leaf of the step's graph; the held-out passes use it
        too): a new weight-sized tensor for every linear in every step and every held-out batch fragmented the heap
        until the 1.5B model's RSS was twice its live memory.
        When the step's backward has summed the buffer's gradient, `_weight_backward` carries it to the float tensors.
        """
        build = self._dense_weight if self.stored_order is None else self.stored_order.weight
        self.allocate()
        with torch.no_grad():
            self.buffer.copy_(build(self.floats()))
        self.held = self.buffer, None if self.stored_order is None else self.stored_order.order

    def allocate(self) -> None:
        """The held weight's buffer, [out, in] in the product's dtype (kept until `compute_in` changes the dtype).

        The stage allocates every linear's buffer before building any weight: allocated one by one between the
        builds' weight-sized temporaries, the buffers pinned the temporaries' freed holes in the heap, which the
        allocator could neither reuse nor return (Qwen 1.5B's stage: peak RSS 11.29 -> 9.91 GiB)."""
        if self.buffer is None:
            self.buffer = torch.empty(self.out_features, self.in_features, dtype=self.dtype, device=self.device)
            self.buffer.requires_grad_(True)
            self.buffer.register_post_accumulate_grad_hook(self._weight_backward)

    def _weight_backward(self, buffer: torch.Tensor) -> None:
        """The held weight's gradient into the float tensors' changes: the weight is rebuilt with its graph (one
        linear at a time) and the gradient dropped."""
        build = self._dense_weight if self.stored_order is None else self.stored_order.weight
        with torch.enable_grad():
            torch.autograd.backward(build(self.floats()), buffer.grad)
        buffer.grad = None

    def release(self) -> None:
        self.held = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, order = self.held if self.held is not None else self.product_weight()
        if order is not None:
            x = x.index_select(-1, order)
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def rounded_floats(self) -> dict[str, torch.Tensor]:
        """The trained tensors in their stored dtype (float16), on the CPU; non-finite values keep the original."""
        out = {}
        for name, value in self.floats().items():
            stored = value.to(self.stored_dtypes[name])
            original = self.base(name).to(self.stored_dtypes[name])
            out[name] = torch.where(torch.isfinite(stored), stored, original).cpu()
        return out

    def rounded_format(self, source: PackedFormat) -> PackedFormat:
        """`source` (the CPU format this module was built from) with the rounded trained tensors."""
        return source.with_floats(**self.rounded_floats())

    @torch.no_grad()
    def load_rounded(self, floats: dict[str, torch.Tensor]) -> None:
        for name, value in floats.items():
            self.base(name).copy_(value.float())
            self.deltas[name].zero_()


def step_bytes(fmt: PackedFormat, dtype_bytes: int) -> int:
    """What a TrainableQuantLinear holds through a training step beside its float32 tensors: the format as loaded
    (bit planes one byte a weight), the held weight in the compute dtype and, in the stored order, the salient
    columns (its int8 planes are a view of the format's)."""
    held = fmt.out_features * fmt.in_features * dtype_bytes + _tensor_bytes(fmt)
    if not _StoredOrder.fits(fmt):
        return held
    return held + fmt.out_features * fmt.k_salient * dtype_bytes


def _tensor_bytes(value) -> int:
    """Bytes of every tensor field of a format (nested dataclasses such as sparse parts too)."""
    import dataclasses

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(_tensor_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 0


def _format_to(fmt: PackedFormat, device) -> PackedFormat:
    """A copy of the format with every tensor field on `device` (nested dataclasses such as sparse parts too)."""
    import dataclasses

    def move(value):
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.replace(value, **{f.name: move(getattr(value, f.name)) for f in dataclasses.fields(value)})
        return value

    return move(fmt)


class _StoredOrder:
    """A bit-plane format's weight in its stored column order (binarized channels, then the salient ones), from
    planes viewed as int8 (0/1: exact in any float dtype): per step only the
    per-row/group scales multiply them. bf16 copies would hold two more bytes a weight, and an int8-by-bf16 product is
    as fast; summing the planes one by one, not with `.sum(0)`, is ~5x faster for the usual single plane."""

    @staticmethod
    def fits(fmt: PackedFormat) -> bool:
        if not isinstance(fmt, BitPlaneFormat) or fmt.sparse is not None:
            return False
        groups = fmt.scales.shape[-1]
        return groups == 1 or groups * fmt.group_size == fmt.k_bin

    def __init__(self, fmt: BitPlaneFormat, dtype: torch.dtype):
        self.dtype, self.k_bin, self.groups = dtype, fmt.k_bin, fmt.scales.shape[-1]
        p, n, k_bin = fmt.planes.shape
        # a bool tensor's bytes are 0/1: viewed as int8, not copied
        self.planes = fmt.planes.contiguous().view(torch.int8).reshape(p, n, self.groups, k_bin // self.groups)
        self.order = None if fmt.perm is None else fmt.perm.long()
        # codes minus zero points (a float16 zero in version-1 files): a few columns, held in the compute dtype
        self.salient = None if not fmt.k_salient else (
            fmt.salient_codes.float() - fmt.salient_zero.float()[:, None]).to(dtype)

    def weight(self, floats: dict[str, torch.Tensor]) -> torch.Tensor:
        d = self.dtype
        scales = floats["scales"].to(d)[..., None]
        w = self.planes[0] * scales[0]  # [N, groups, G] in d
        for plane, scale in zip(self.planes[1:], scales[1:]):
            w = w + plane * scale
        if floats.get("offsets") is not None:
            w = w + floats["offsets"].to(d)[..., None]
        w = w.flatten(1)
        if floats.get("out_scale") is not None:
            w = w * floats["out_scale"].to(d)[:, None]
        if floats.get("in_scale") is not None:
            in_scale = floats["in_scale"] if self.order is None else floats["in_scale"][self.order]
            w = w * in_scale[: self.k_bin].to(d)[None, :]
        if self.salient is not None:
            w = torch.cat([w, self.salient * floats["salient_scale"].to(d)[:, None]], dim=1)
        return w
