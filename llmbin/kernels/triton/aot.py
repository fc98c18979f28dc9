"""Ahead-of-time compile of the shipped Triton kernels for given CUDA archs (no GPU needed).

`python -m llmbin.kernels.triton.aot 80 90` prints one JSON line per kernel config with its
registers and spill bytes (from the cubin's resource usage). Must run without TRITON_INTERPRET:
the interpreter replaces @triton.jit functions, which triton.compile cannot take.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

COMMON = {"w_ptr": "*i32", "s_ptr": "*fp32", "o_ptr": "*fp32", "N": "i32", "KW": "i32", "wpg": "i32"}
MATMUL = {**COMMON, "y_ptr": "*fp32", "M": "i32", "stride_xm": "i32", "tiles_per_split": "i32"}

# The heaviest variants the host code launches: most planes (4 = salient block), offsets, largest tiles.
CONFIGS = [
    ("bitplane_gemv_kernel", {**MATMUL, "x_ptr": "*fp32"},
     dict(P=4, HAS_OFFSETS=True, BLOCK_M=4, BLOCK_N=32, BLOCK_W=4, USE_ATOMIC=True)),
    ("bitplane_gemv_kernel", {**MATMUL, "x_ptr": "*fp32"},
     dict(P=2, HAS_OFFSETS=True, BLOCK_M=1, BLOCK_N=32, BLOCK_W=4, USE_ATOMIC=False)),
    ("bitplane_gemm_kernel", {**MATMUL, "x_ptr": "*fp16"},
     dict(P=4, HAS_OFFSETS=True, BLOCK_M=64, BLOCK_N=64, BLOCK_W=1, USE_ATOMIC=True, PRECISION="ieee")),
    ("bitplane_gemm_kernel", {**MATMUL, "x_ptr": "*fp32"},
     dict(P=4, HAS_OFFSETS=True, BLOCK_M=64, BLOCK_N=64, BLOCK_W=1, USE_ATOMIC=True, PRECISION="tf32")),
    ("bitplane_gemm_kernel", {**MATMUL, "x_ptr": "*fp32"},
     dict(P=4, HAS_OFFSETS=True, BLOCK_M=16, BLOCK_N=32, BLOCK_W=1, USE_ATOMIC=True, PRECISION="ieee")),
    ("bitplane_dequant_kernel", {**COMMON, "out_ptr": "*bf16"},
     dict(P=4, HAS_OFFSETS=True, BLOCK_N=64, BLOCK_W=1)),
]


def _resources(cubin: bytes) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    cuobjdump = Path(get_ptxas(80).path).with_name("cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([str(cuobjdump), "-res-usage", str(path)], capture_output=True, text=True, check=True)
    return {k.lower(): int(v) for k, v in re.findall(r"(REG|STACK|LOCAL|SHARED):(\d+)", out.stdout)}


def compile_all(archs=(80, 90), num_warps: int = 4) -> list[dict]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import kernels

    results = []
    for name, signature, constexprs in CONFIGS:
        fn = getattr(kernels, name)
        sig = {arg: signature.get(arg, "constexpr") for arg in fn.arg_names}
        for arch in archs:
            src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
            res = _resources(compiled.asm["cubin"])
            results.append({"kernel": name, "arch": arch, **{k: v for k, v in constexprs.items()}, **res,
                            "spills": res.get("local", 0) + res.get("stack", 0)})
    return results


if __name__ == "__main__":
    for row in compile_all(tuple(int(a) for a in sys.argv[1:]) or (80, 90)):
        print(json.dumps(row), flush=True)
