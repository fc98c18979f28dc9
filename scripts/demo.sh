#!/usr/bin/env bash
# The main job on the embedded default model: quantize SmolLM2-135M, then compare perplexity on held-out text.
set -euo pipefail
LLMBIN=.venv/bin/llmbin
EVAL="--ppl data/britannica-eval.txt --seqlen 256 --max-windows 48"
RECIPE=${LLMBIN_DEMO_RECIPE:-ptq161-demo}
echo "== full precision SmolLM2-135M"
$LLMBIN eval smollm2-135m $EVAL --json out/demo-fp.json
echo "== quantize with recipe $RECIPE: a LIGHT demo recipe (few calibration windows and epochs, so it runs in minutes on 2 CPU cores;"
echo "   the full PTQ1.61 recipe is llmbin/recipes/ptq161.yaml). Recipe: llmbin/recipes/$RECIPE.yaml"
$LLMBIN quantize smollm2-135m --recipe "$RECIPE" --dataset data/britannica-calib.txt -o out/demo --overwrite -q
echo "== quantized"
$LLMBIN eval out/demo $EVAL --json out/demo-q.json
$LLMBIN inspect out/demo | grep -E '^(decoder linears|whole model):'
.venv/bin/python - <<'PY'
import json
fp = json.load(open("out/demo-fp.json"))["perplexity"][0]["ppl"]
q = json.load(open("out/demo-q.json"))["perplexity"][0]["ppl"]
print(f"perplexity on held-out Britannica text (gptq protocol, seqlen 256): full precision {fp:.2f}, quantized {q:.2f}")
PY
