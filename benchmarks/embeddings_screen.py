"""Screening (reduced scale): the float SmolLM2 with only its tied embedding/head quantized, per setting.

    OMP_NUM_THREADS=1 python benchmarks/embeddings_screen.py --windows 8
    SCREEN="int4-g32:1,int5-g64:1,int6-row:1" OMP_NUM_THREADS=1 python benchmarks/embeddings_screen.py --windows 8
Isolates what the embedding/head setting costs, and GPTQ (head Hessian) vs plain rounding for the tied matrix.
Calibration: the first 8 windows x 512 tokens of calib_coqa; eval: protocol v1 text and seqlen, first N windows.
"""
import argparse
import copy
import os
import time

import torch

from llmbin.api import evaluate_ppl
from llmbin.data import calibration_windows, load_text, token_stream
from llmbin.calibrate.embeddings import head_input_stats, quantize_matrix
from llmbin.models.loading import load_model
from llmbin.nn import QuantEmbedding, TiedQuantHead
from llmbin.checkpoint.storage_dtype import round_to_storage

ap = argparse.ArgumentParser()
ap.add_argument("--windows", type=int, default=8)
args = ap.parse_args()
model, tok = load_model("smollm2-135m")
round_to_storage(model, torch.float16)
calib = calibration_windows(token_stream(tok, load_text("/work/shared/data/calib_coqa.txt", split="calibration")), 8, 512, 0)
stats = head_input_stats(model, calib, 4)
print(f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}, eval windows {args.windows} x 512")
print("| tied matrix | calibration | ppl | seconds |\n|---|---|---|---|")
ap2 = os.environ.get("SCREEN", "float (fp16):-,int8-row:1,int4-row:1,int4-g64:1,int4-g64:0,int4-row:0")
for setting, use_stats in [(p.split(":")[0], {"-": None, "1": True, "0": False}[p.split(":")[1]]) for p in ap2.split(",")]:
    m = copy.deepcopy(model)
    if use_stats is not None:
        bits, group = int(setting[3]), (-1 if setting.endswith("row") else int(setting.split("-g")[1]))
        fmt, _ = quantize_matrix(m.model.embed_tokens.weight, bits, group, stats if use_stats else None)
        m.model.embed_tokens = QuantEmbedding.from_format(fmt, None, torch.float32)
        m.lm_head = TiedQuantHead(m.model.embed_tokens)
    t = time.perf_counter()
    ppl = evaluate_ppl(m, tok, ["/work/shared/data/eval_xsum.txt"], 512, args.windows)[0]["ppl"]
    label = "-" if use_stats is None else ("GPTQ, head Hessian" if use_stats else "round to nearest")
    print(f"| {setting} | {label} | {ppl:.3f} | {time.perf_counter() - t:.0f} |", flush=True)
print(f"load at end {os.getloadavg()[0]:.2f}")
