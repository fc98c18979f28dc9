"""A graph pass for the compiled decode step: packed products of the same activations become one call.

A decoder layer multiplies one normed hidden state by q, k and v, and another by gate and up. Each
`llmbin_cpu::lut_matmul` call prepares the token's activations, wakes the kernel's thread pool and waits for it;
on SmolLM2 those fixed costs are a large share of a 576 x 192 product. After AOT autograd (post-grad), this pass
groups one token's calls that read the same tensor with the same ISA (up to 3 a call) into one
`llmbin_cpu::lut_matmul_many`, whose output is their products side by side (each original is a slice of it); its
integer-code path prepares the token once and splits every layer's row blocks over the pool in one run
(kernels/cpu/fused_products.h); other plans run one by one inside it, as before. Results are the single calls'
bit for bit: each row block's sums do not depend on which call or thread computes them.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass


class FuseSharedInputProducts(CustomGraphPass):
    groups_fused = 0  # over the process, for tests (a graph loaded from the compile cache was rewritten before)

    def __call__(self, graph: torch.fx.Graph) -> None:
        if not hasattr(torch.ops.llmbin_cpu, "lut_matmul_many"):  # the CPU extension is not loaded: nothing to fuse
            return
        single = torch.ops.llmbin_cpu.lut_matmul.default
        groups: dict[tuple, list[torch.fx.Node]] = {}
        for node in graph.nodes:
            if node.op == "call_function" and node.target is single and not node.kwargs and one_token(node.args[0]):
                x, _key, _n, isa = node.args
                groups.setdefault((x, isa), []).append(node)
        for (x, isa), nodes in groups.items():
            for at in range(0, len(nodes) - 1, MOST):
                chunk = nodes[at:at + MOST]
                if len(chunk) > 1:
                    fuse(graph, x, isa, chunk)
                    FuseSharedInputProducts.groups_fused += 1

    def uuid(self) -> str:
        # compiled graphs are cached on disk: a changed pass must not reuse graphs the old one rewrote
        return hashlib.sha1(Path(__file__).read_bytes()).hexdigest()


MOST = 3  # products per fused call (the op's schema: plain ints, so the C++ wrapper calls it without Python)


def one_token(x: torch.fx.Node) -> bool:
    """Only a single token's products are fused: slices of [1, ..., N] outputs stay viewable as the originals."""
    val = x.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dim() >= 1 and val.numel() == val.shape[-1]


def fuse(graph: torch.fx.Graph, x: torch.fx.Node, isa: int, nodes: list[torch.fx.Node]) -> None:
    """nodes -> one lut_matmul_many whose output is their products side by side, each original a slice of it."""
    args = [x]
    for node in nodes + [None] * (MOST - len(nodes)):
        args += [node.args[1], node.args[2]] if node is not None else [-1, 0]
    with graph.inserting_before(nodes[0]):  # x is defined before every member; their users come after
        fused = graph.call_function(torch.ops.llmbin_cpu.lut_matmul_many.default, (*args, isa))
        fused.meta["val"] = torch.cat([n.meta["val"] for n in nodes], -1)
        start = 0
        for node in nodes:
            n = node.args[2]
            part = graph.call_function(torch.ops.aten.slice.Tensor, (fused, -1, start, start + n))
            part.meta["val"] = fused.meta["val"][..., start:start + n]
            start += n
            node.replace_all_uses_with(part)
    for node in nodes:
        graph.erase_node(node)
