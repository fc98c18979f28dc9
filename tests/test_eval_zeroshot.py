"""`llmbin eval --tasks` through lm-eval on local task directories (offline), protocols, baseline and delta."""
import json
import math

import pytest
from click.testing import CliRunner

from llmbin.cli import main

# Two-choice common-sense questions (written for this test); label = index of the right answer.
QUESTIONS = [
    ("Ice is made of frozen", ["water", "sand"], 0),
    ("The sun rises in the", ["west", "east"], 1),
    ("A cat says", ["meow", "moo"], 0),
    ("To see in the dark you turn on a", ["lamp", "spoon"], 0),
    ("Fish live in", ["trees", "water"], 1),
    ("Bread is baked in an", ["oven", "ocean"], 0),
    ("The color of grass is", ["green", "purple"], 0),
    ("You write with a", ["pencil", "pillow"], 0),
    ("Birds fly with their", ["wings", "wheels"], 0),
    ("At night the sky is", ["dark", "bright green"], 0),
    ("We hear with our", ["ears", "knees"], 0),
    ("Snow is", ["hot", "cold"], 1),
    ("A week has seven", ["days", "years"], 0),
    ("You drink coffee from a", ["cup", "shoe"], 0),
    ("Cows give us", ["milk", "glass"], 0),
    ("Rain falls from the", ["ground", "clouds"], 1),
    ("A car drives on the", ["road", "moon"], 0),
    ("People sleep in a", ["bed", "kettle"], 0),
    ("The opposite of up is", ["down", "blue"], 0),
    ("Two plus two equals", ["four", "nine"], 0),
    ("Fire feels", ["hot", "frozen"], 0),
    ("A doctor works in a", ["hospital", "volcano"], 0),
    ("Bees make", ["honey", "iron"], 0),
    ("You open a door with a", ["key", "banana"], 0),
    ("The capital of France is", ["Paris", "Tokyo"], 0),
    ("Children learn to read at", ["school", "sea"], 0),
    ("Winter is colder than", ["summer", "ice"], 0),
    ("To cut paper you use", ["scissors", "soup"], 0),
]

TASK_YAML = """task: llmbin_two_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_task(directory):
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "two_choice.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "label": y}) + "\n" for q, c, y in QUESTIONS))
    (directory / "two_choice.yaml").write_text(TASK_YAML.format(data=data))
    return directory


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_local_task_tiny_model_with_baseline(tiny_llama_dir, tmp_path):
    """Fast path: a tiny random Llama, the task from a local directory, baseline = itself (delta 0)."""
    tasks = write_task(tmp_path / "tasks")
    out = tmp_path / "r.json"
    result = run("eval", tiny_llama_dir, "--tasks", "llmbin_two_choice", "--include-path", tasks, "--limit", "8",
                 "--seed", "3", "--baseline", tiny_llama_dir, "--seqlen", "128", "--json", out)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    task = record["zeroshot"]["tasks"]["llmbin_two_choice"]
    acc = task["metrics"]["acc"]
    assert 0 <= acc["value"] <= 1 and acc["stderr"] is not None
    assert task["n_samples"] == 8 and task["n_total"] == len(QUESTIONS) and task["version"] == 1.0
    assert task["protocol"] == "lm-eval multiple_choice, 0-shot" and task["num_fewshot"] == 0
    assert record["zeroshot"]["seeds"] == {"random_seed": 3, "numpy_random_seed": 3, "torch_random_seed": 3,
                                           "fewshot_random_seed": 3}
    assert record["versions"]["lm_eval"] and record["versions"]["llmbin"]
    assert record["delta"]["zeroshot"]["llmbin_two_choice"]["acc"]["delta"] == 0
    assert "baseline" in result.output and "delta +0.0000" in result.output


def test_protocol_errors_are_one_line(tiny_llama_dir, text_file, tmp_path):
    for args, message in [
        (["--tasks", "no_such_task_xyz", "--include-path", write_task(tmp_path / "t")], "unknown lm-eval task"),
        (["--ppl", text_file, "--protocol", "lm-eval"], "protocol lm-eval scores only"),
        (["--protocol", "lm-eval", "--seqlen", "128"], "wikitext data"),  # offline in tests: the hub dataset cannot be had
        ([], "nothing to evaluate"),
    ]:
        result = run("eval", tiny_llama_dir, *args)
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], result.output


def test_gptq_protocol_json_keeps_its_shape(tiny_llama_dir, text_file, tmp_path):
    result = run("eval", tiny_llama_dir, "--ppl", text_file, "--seqlen", "64", "--max-windows", "2",
                 "--baseline", tiny_llama_dir, "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "e.json").read_text())
    assert record["perplexity"][0]["protocol"] == "gptq" and record["spec"]["protocol"] == "gptq"
    assert record["delta"]["perplexity"][0]["delta"] == 0 and math.isfinite(record["perplexity"][0]["ppl"])


@pytest.mark.slow
def test_packed_smollm2_local_task_end_to_end(text_file, tmp_path):
    """The acceptance run: pack SmolLM2 4-bit g128, score the local task through lm-eval on the packed kernels. RTN
    writes the same uniform format as GPTQ-4 (what lm-eval runs is the same) in seconds instead of ~45 s of GPTQ's
    column loop; GPTQ on the real model is test_smollm2.py's."""
    packed = tmp_path / "smol-rtn4"
    result = run("quantize", "smollm2-135m", "--method", "rtn", "--bits", "4", "--group-size", "128",
                 "--dataset", text_file, "--nsamples", "2", "--seqlen", "64", "-o", packed, "-q")
    assert result.exit_code == 0, result.output
    tasks = write_task(tmp_path / "tasks")
    out = tmp_path / "out.json"
    result = run("eval", packed, "--tasks", "llmbin_two_choice", "--include-path", tasks, "--limit", "20",
                 "--json", out)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    acc = record["zeroshot"]["tasks"]["llmbin_two_choice"]["metrics"]["acc"]["value"]
    assert 0 <= acc <= 1 and record["zeroshot"]["tasks"]["llmbin_two_choice"]["n_samples"] == 20
    from llmbin.api import load_any
    from llmbin.nn import QuantLinear

    model, _ = load_any(str(packed))
    assert any(isinstance(m, QuantLinear) for m in model.modules())  # what lm-eval scored ran the packed kernels


def test_lmeval_wikitext_protocol_on_local_copy(tiny_llama_dir, tmp_path, monkeypatch):
    """The lm-eval protocol's code path offline: lm-eval's own wikitext task, its data swapped for local
    documents; word perplexity must equal exp(sum of token NLL / words) computed here independently."""
    import shutil

    import torch
    import torch.nn.functional as F
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmbin.eval import lmeval_ppl
    from llmbin.integrations.lmeval import builtin_task_dir

    task_dir = tmp_path / "wikitext"
    shutil.copytree(builtin_task_dir("wikitext"), task_dir, ignore=shutil.ignore_patterns("__pycache__"))
    docs = [" = Rivers = \n Rivers carry water from hills to the sea . \n",
            " = Bread = \n Bread is baked from flour , water and yeast in an oven . \n"]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"page": d}) + "\n" for d in docs))
    text = (task_dir / "wikitext.yaml").read_text().replace("!function ", "FUNCTION:")
    config = yaml.safe_load(text)
    config.update(dataset_path="json", dataset_kwargs={"data_files": {s: str(data) for s in ("train", "validation", "test")}})
    config.pop("dataset_name")
    (task_dir / "wikitext.yaml").write_text(yaml.safe_dump(config).replace("FUNCTION:", "!function "))
    monkeypatch.setattr(lmeval_ppl, "builtin_task_dir", lambda name: task_dir)

    out = tmp_path / "w.json"
    result = run("eval", tiny_llama_dir, "--protocol", "lm-eval", "--seqlen", "128", "--json", out)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())["perplexity"][0]
    assert record["protocol"] == "lm-eval" and record["metric"] == "word_perplexity" and record["documents"] == 2

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    detok = __import__("lm_eval.tasks.wikitext.preprocess_wikitext", fromlist=["x"]).wikitext_detokenizer
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    nll, words = 0.0, 0
    with torch.no_grad():
        for d in docs:
            ids = torch.tensor([[prefix] + tokenizer(detok({"page": d}), add_special_tokens=False)["input_ids"]])
            logits = model(ids).logits[0, :-1]
            nll += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            words += len(__import__("re").split(r"\s+", d))
    assert record["ppl"] == pytest.approx(math.exp(nll / words), rel=1e-4)
