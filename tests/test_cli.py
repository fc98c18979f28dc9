"""CLI end to end on a tiny model, and every bad input: one line, non-zero exit, no output left behind."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import llmbin
from llmbin.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def quantize_args(model, text, out, *extra):
    return ["quantize", model, "--method", "gptq", "--bits", "3", "--group-size", "32", "--dataset", text,
            "--nsamples", "4", "--seqlen", "32", "-o", out, "-q", *extra]


def test_quantize_eval_inspect(tiny_llama_dir, text_file, tmp_path):
    out = tmp_path / "q"
    result = run(*quantize_args(tiny_llama_dir, text_file, out))
    assert result.exit_code == 0, result.output
    assert "3.0 bits/weight (paper)" in result.output
    result = run("eval", out, "--ppl", text_file, "--seqlen", "64", "--max-windows", "4", "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "e.json").read_text())["perplexity"][0]
    assert record["protocol"] == "gptq" and record["windows"] == 4 and record["seqlen"] == 64 and record["ppl"] > 1
    result = run("inspect", out, "--json", tmp_path / "i.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "i.json").read_text())
    assert report["totals"]["modules"] == 14 and report["totals"]["bpw_paper"] == 3.0
    assert 3.0 < report["totals"]["bpw_all_in"] < 4.5  # 3.2-bit words + group scale/zero
    assert all(row["backend_cpu"] for row in report["modules"])
    assert run(*quantize_args(tiny_llama_dir, text_file, out)).exit_code == 2  # exists: refused, kept
    assert (out / "config.json").exists()


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, tiny_llama_dir):
    base = tmp_path_factory.mktemp("bad")
    (base / "empty").mkdir()
    (base / "short.txt").write_text("Too short to calibrate on.")
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=100)).save_pretrained(base / "bert")
    from transformers import AutoTokenizer, LlamaForCausalLM

    nan_model = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        nan_model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    nan_model.save_pretrained(base / "nan")
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(base / "nan")
    return base


CASES = {
    "nonexistent model id": (lambda b, m, t: ["nonexistent-org/no-such-model"], "not found"),
    "nonexistent path": (lambda b, m, t: [b / "does" / "not" / "exist"], "does not exist"),
    "not a model directory": (lambda b, m, t: [b / "empty"], "not a model directory"),
    "encoder-only model": (lambda b, m, t: [b / "bert"], "not a causal language model"),
    "calibration text too short": (lambda b, m, t: [m, "--dataset", b / "short.txt"], "fewer than one window"),
    "seqlen above context": (lambda b, m, t: [m, "--seqlen", "4096"], "above"),
    "unknown method": (lambda b, m, t: [m, "--method", "nope"], "unknown method 'nope'"),
    "unknown --set key": (lambda b, m, t: [m, "--set", "nope=1"], "unknown gptq parameter key 'nope'"),
    "bad --set value": (lambda b, m, t: [m, "--set", "act_order=maybe"], "expected true/false"),
    "NaN weights": (lambda b, m, t: [b / "nan"], "NaN or infinite weights"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line_error(case, bad_inputs, tiny_llama_dir, text_file, tmp_path):
    make_args, message = CASES[case]
    args = make_args(bad_inputs, tiny_llama_dir, text_file)
    out = tmp_path / "out"
    model, extra = args[0], args[1:]
    cmd = ["quantize", model, "--dataset", text_file, "--nsamples", "2", "--seqlen", "32", "-o", out, "-q",
           "--method", "gptq", *extra]
    result = run(*cmd)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".out.partial*"))


def test_method_without_recipe_uses_the_shipped_recipe_of_its_name(tiny_llama_dir, text_file, tmp_path, monkeypatch):
    """`--method ptq161` means the shipped ptq161 recipe (its epochs and preprocessing), read here from the YAML
    file itself; a method with no shipped recipe of its name keeps the method's own defaults."""
    import yaml

    import llmbin.api
    from llmbin.recipe import Recipe

    seen = {}

    def capture(model, recipe, **kw):
        seen[recipe.method] = recipe
        raise SystemExit(0)

    monkeypatch.setattr(llmbin.api, "quantize", capture)
    for method in ("ptq161", "gptq"):
        run("quantize", tiny_llama_dir, "--method", method, "--dataset", text_file, "-o", tmp_path / method, "-q")
    shipped = yaml.safe_load((Path(llmbin.__file__).parent / "recipes" / "ptq161.yaml").read_text())["params"]
    got = seen["ptq161"].params
    assert got.epochs == shipped["epochs"] != Recipe.create("ptq161").params.epochs
    assert got.preprocess.enabled == shipped["preprocess"]["enabled"]
    from llmbin.methods.ptq161_preprocess import LoRAPreprocess

    assert got.preprocess.pass1_epochs == shipped["preprocess"].get("pass1_epochs", LoRAPreprocess().pass1_epochs)
    assert seen["gptq"].params == Recipe.create("gptq").params


def test_methods_lists_what_each_shipped_recipe_runs():
    """`llmbin methods` names every shipped recipe and its stages, read against the YAML files themselves: the
    recipes that run the distillation stage say so, with their window count."""
    import yaml

    import llmbin
    from llmbin.distill.options import DistillOptions

    result = run("methods")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for path in sorted((Path(llmbin.__file__).parent / "recipes").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        distill = data.get("distill") or {}
        # a recipe named like its method shows on the method's line; the others each get a line of their own
        line = next(i for i, l in enumerate(lines) if l.split() and l.split()[0] == path.stem)
        runs = lines[line] if path.stem != data["method"] else lines[line + 1]
        assert "runs:" in runs, runs
        if distill.get("enabled"):
            assert f"distillation ({distill.get('nsamples', DistillOptions().nsamples)} x" in runs, runs
        else:
            assert "distillation" not in runs, runs
