"""Run `llmbin quantize ... --set preprocess.enabled=true` with PTQ1.61's pass 1 taken from an earlier run.

Pass 1 of the preprocessing is PTQ1.61 without preprocessing; when a checkpoint of exactly that
(same model, recipe apart from `preprocess`, calibration, seed) exists, its layer files are what pass 1
would write byte for byte, so this seeds pass 1's work area with them and the run resumes from there
(the ~15 min of pass 1 are not spent twice in a benchmark). Usage:

    python benchmarks/ptq161_seeded_pass1.py PASS1_CHECKPOINT OUT -- <llmbin quantize arguments without -o>
"""
import json
import shutil
import sys
from pathlib import Path

import llmbin.methods.ptq161_preprocess as pre

source, out = Path(sys.argv[1]), sys.argv[2]
real_run = pre.run_preprocess


def seeded(method, model, ctx, work, quantize_pass):
    area = work.path / ".preprocess.partial"
    if not area.exists():
        area.mkdir()
        manifest = json.loads((source / "manifest.json").read_text())
        for entry in manifest["layers"].values():
            shutil.copy(source / entry["file"], area / entry["file"])
        manifest["fingerprint"] = work.fingerprint  # the run's own; the layers are pass 1's either way
        (area / "manifest.json").write_text(json.dumps(manifest))
        ctx.log.note(f"pass 1 seeded from {source}")
    return real_run(method, model, ctx, work, quantize_pass)


pre.run_preprocess = seeded
from llmbin.cli import main  # noqa: E402

sys.argv = ["llmbin", "quantize", *sys.argv[4:], "-o", out]
main()
