"""`llmbin compare`: the report/plot writer on synthetic records, and a small end-to-end run on a tiny model."""
import json
import math

import pytest

from click.testing import CliRunner

from llmbin.cli import main
from llmbin.compare.report import markdown, write_report


def ppl(name, value):
    return {"name": name, "protocol": "gptq", "seqlen": 512, "windows": 128, "ppl": value, "seconds": 1.0}


def task(acc):
    return {"tasks": {"two_choice": {"metrics": {"acc": {"value": acc, "stderr": 0.05}}, "version": 1.0,
                                     "n_samples": 20, "n_total": 28, "num_fewshot": 0, "output_type": "multiple_choice",
                                     "protocol": "lm-eval multiple_choice, 0-shot"}}}


def method(label, paper, all_in, value, acc=0.6, **extra):
    return {"label": label, "method": label.split("-")[0], "recipe": {"params": {"bits": 2}},
            "bits": {"bpw_paper": paper, "bpw_all_in": all_in}, "quantize_seconds": 321.4, "peak_rss_mb": 1834.2,
            "perplexity": [ppl("/data/eval_xsum.txt", value)], "zeroshot": task(acc), "error": None, **extra}


def synthetic() -> dict:
    """Close clusters on purpose (labels must still not collide), a collapsed, an infinite and a failed method."""
    return {"model": "smollm2-135m", "command": "llmbin compare ...",
            "versions": {"llmbin": "0.1.0", "lm_eval": "0.4.13"},
            "calibration": {"dataset": "calib.txt", "nsamples": 128, "seqlen": 512, "seed": 0},
            "eval": {"protocol": "gptq", "seqlen": 512, "max_windows": 128, "limit": 20, "num_fewshot": None,
                     "seeds": {"random_seed": 0}},
            "notes": ["synthetic numbers"], "peak_rss_kind": "per method",
            "reference": {"label": "full precision", "bits": {"bpw_paper": 32, "bpw_all_in": 32},
                          "perplexity": [ppl("/data/eval_xsum.txt", 30.49)], "zeroshot": task(0.8)},
            "methods": [method("rtn", 4, 4.25, 41.2), method("gptq", 4, 4.25, 33.9), method("gptq-3", 3, 3.25, 100.75),
                        method("gptq-2", 2, 2.25, 186606.0), method("rtn-2", 2, 2.25, 4350138.0),
                        method("pbllm", 1.7, 2.7, 1586.0), method("dbllm", 2, 2.5, 120.0),
                        method("ptq161", 1.61, 1.62, 663.3, size={"file_bytes": 37_912_345, "bits_per_parameter": 2.25}),
                        method("billm", 1.1, 2.3, math.inf),
                        {"label": "broken", "method": "broken", "recipe": {}, "error": "RuntimeError: boom"}]}


def drawn(monkeypatch):
    """Figures the report writes, as {file name: [(x, y) of every marker]} (y on the data scale), once closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures, real_close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (figures.append(fig), real_close(fig)))

    def points():
        out = []
        for fig in figures:
            ax = fig.axes[0]
            out.append(sorted((round(float(x), 4), round(float(y), 4)) for c in ax.collections
                              for x, y in c.get_offsets()))
        return out
    return points


def test_report_and_plot_on_synthetic_records(tmp_path, monkeypatch):
    import matplotlib.image

    points = drawn(monkeypatch)
    paths = write_report(synthetic(), tmp_path)
    report = paths["markdown"].read_text()
    for row in ("| method | paper bits | all-in bits | file MB | bits/param | ppl eval_xsum.txt | two_choice acc | "
                "quantize time | peak RSS (MB) |",
                "| gptq | 4 | 4.25 | - | - | 33.90 | 0.600 ± 0.050 | 5 min 21 s | 1834 |",
                "| gptq-2 | 2 | 2.25 | - | - | 186,606 |", "| ptq161 | 1.61 | 1.62 | 37.9 | 2.25 | 663.30 |"):
        assert row in report, row
    assert "| full precision | 32 | 32 | - | - | 30.49 | 0.800 ± 0.050 | - | - |" in report
    assert "| broken | failed: RuntimeError: boom |" in report and "![perplexity vs all-in bits](ppl_vs_bits.png)" in report
    assert json.loads(paths["json"].read_text())["methods"][0]["label"] == "rtn"
    image = matplotlib.image.imread(paths["plot"])
    assert image.shape[0] > 400 and image.shape[1] > 700 and len({tuple(p) for p in image.reshape(-1, 4)[::97]}) > 8
    assert "![perplexity vs file size](ppl_vs_file_mb.png)" in report and paths["plot_file_mb"].exists()
    rows = [m for m in synthetic()["methods"] if not m.get("error")]
    finite = [(m["bits"]["bpw_all_in"], round(m["perplexity"][0]["ppl"], 4)) for m in rows
              if math.isfinite(m["perplexity"][0]["ppl"])]
    bits_points, file_points = points()  # what was drawn: every row at its bits; finite ones at their perplexity,
    assert sorted(x for x, _ in bits_points) == sorted(m["bits"]["bpw_all_in"] for m in rows)  # an infinite one
    assert set(finite) <= set(bits_points)  # above all of them
    assert all(y > max(v for _, v in finite) for p in bits_points if p not in finite for y in [p[1]])
    assert file_points == [(37.9123, 663.3)]  # only the row that has a size


def test_plot_labels_do_not_overlap(tmp_path, monkeypatch):
    """Every method gets exactly one label, inside the axes, overlapping no other label or marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmbin.compare import report

    captured = {}
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: captured.setdefault("fig", fig))
    report.plot_ppl_vs_bits(synthetic(), tmp_path / "p.png")
    fig = captured["fig"]
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    labels = [a for a in ax.texts if type(a).__name__ == "Annotation"]
    ok = [m for m in synthetic()["methods"] if not m.get("error")]
    assert sorted(a.get_text().split(":")[0] for a in labels) == sorted(m["label"] for m in ok)
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(a, renderer) for a in labels]  # the text alone, not its leader line
    frame = ax.get_window_extent(renderer)
    markers = [ax.transData.transform(xy) for c in ax.collections for xy in c.get_offsets()]
    assert len(markers) == len(labels)
    for i, a in enumerate(boxes):
        assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1, labels[i].get_text()
        assert not any(a.contains(*m) for m in markers), labels[i].get_text()
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (labels[i].get_text(), [t.get_text() for t in labels])
    assert any("full precision: 30.49" == t.get_text() for t in ax.texts)
    real_close(fig)


def test_markdown_without_tasks():
    results = synthetic()
    for row in [results["reference"], *results["methods"]]:
        row.pop("zeroshot", None)
    assert "acc" not in markdown(results).split("\n\n")[2]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_unregistered_method_lists_available(tiny_llama_dir, text_file, tmp_path):
    result = run("compare", tiny_llama_dir, "--methods", "rtn,nosuch", "--dataset", text_file, "--ppl", text_file,
                 "-o", tmp_path / "c")
    assert result.exit_code == 2
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "'nosuch' is not registered; available: " in error[0] and "gptq" in error[0]
    assert not (tmp_path / "c").exists()


def test_compare_tiny_model_end_to_end(tiny_llama_dir, text_file, tmp_path, monkeypatch):
    points = drawn(monkeypatch)
    out = tmp_path / "c"
    recipe = tmp_path / "gptq3.yaml"
    recipe.write_text("method: gptq\nparams: {bits: 3, group_size: 32}\n")
    args = ["compare", tiny_llama_dir, "--methods", "rtn,gptq3", "--recipes", f"gptq3={recipe}", "--set",
            "rtn.group_size=32", "--dataset", text_file, "--nsamples", "4", "--seqlen", "32", "--ppl", text_file,
            "--max-windows", "4", "-o", out]
    result = run(*args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    rows = {m["label"]: m for m in results["methods"]}
    assert rows["gptq3"]["bits"]["bpw_paper"] == 3 and rows["rtn"]["recipe"]["params"]["group_size"] == 32
    assert all(m["recipe"]["calibration"]["nsamples"] == 4 for m in rows.values())
    assert all(m["peak_rss_mb"] > 0 and m["quantize_seconds"] > 0 and m["perplexity"][0]["ppl"] > 1 for m in rows.values())
    assert results["reference"]["perplexity"][0]["windows"] == 4 and (out / "ppl_vs_bits.png").exists()
    from transformers import AutoModelForCausalLM

    params = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).num_parameters()  # tied matrix counted once
    for row in rows.values():  # (file bytes == the directory's safetensors bytes: tests/test_embeddings.py)
        assert row["size"]["parameters"] == params and row["size"]["bits_per_parameter"] == round(
            8 * row["size"]["file_bytes"] / params, 4)
    assert (out / "ppl_vs_file_mb.png").exists()
    by_bits, by_mb = points()[-2:]  # the last report written: every row where its numbers put it
    assert by_bits == sorted((round(m["bits"]["bpw_all_in"], 4), round(m["perplexity"][0]["ppl"], 4))
                             for m in rows.values())
    assert by_mb == sorted((round(m["size"]["file_bytes"] / 1e6, 4), round(m["perplexity"][0]["ppl"], 4))
                           for m in rows.values())
    assert "| gptq3 | 3 |" in (out / "report.md").read_text() and not (out / "checkpoints").exists()
    result = run(*args, "--resume")  # everything reused: no quantization
    assert result.exit_code == 0 and result.output.count("reused") == 3, result.output


def test_set_addresses_rows_whose_names_hold_dots():
    """`--set pbllm-1.7.pipeline.embeddings=none` reaches the pbllm-1.7 row (a shipped recipe name with a dot)."""
    import pytest

    from llmbin.errors import LlmbinError
    from llmbin.compare.run import resolve_entries
    from llmbin.recipe import Recipe

    rows = dict(resolve_entries(["pbllm-1.7", "gptq"], {}, ["pbllm-1.7.pipeline.embeddings=none",
                                                             "pbllm-1.7.salient_ratio=0.2", "gptq.bits=3"]))
    shipped = Recipe.load("pbllm-1.7")
    assert shipped.pipeline.embeddings != "none" and shipped.params.salient_ratio != 0.2
    assert rows["pbllm-1.7"].pipeline.embeddings == "none" and rows["pbllm-1.7"].params.salient_ratio == 0.2
    assert rows["gptq"].params.bits == 3 and rows["gptq"].pipeline.embeddings == shipped.pipeline.embeddings
    with pytest.raises(LlmbinError, match="METHOD.KEY=VALUE"):
        resolve_entries(["pbllm-1.7"], {}, ["pbllm.bits=3"])


def test_compare_row_with_a_distill_stage_reports_what_the_stage_did(tiny_llama_dir, text_file, tmp_path):
    """Two rows that differ only in the recipe's distill stage must not look alike in the report: its params are equal."""
    out = tmp_path / "c"
    recipe = tmp_path / "gptq2-distill.yaml"
    recipe.write_text("method: gptq\nparams: {bits: 2, group_size: 32}\ndistill: {enabled: true, nsamples: 6, "
                      "eval_nsamples: 2, seqlen: 32, epochs: 3, batch_size: 2, lr: 0.02, eval_every: 3, topk: 64}\n")
    result = run("compare", tiny_llama_dir, "--methods", "gptq,gptq2-distill", "--recipes", f"gptq2-distill={recipe}",
                 "--set", "gptq.bits=2", "--set", "gptq.group_size=32", "--dataset", text_file, "--nsamples", "4",
                 "--seqlen", "32", "--ppl", text_file, "--max-windows", "4", "-o", out)
    assert result.exit_code == 0, result.output
    rows = {m["label"]: m for m in json.loads((out / "results.json").read_text())["methods"]}
    assert "distill" not in rows["gptq"]
    stage = rows["gptq2-distill"]["distill"]
    assert stage["steps"] == 9 and stage["kept"] == (stage["loss_after"] < stage["loss_before"])
    report = (out / "report.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith("- gptq2-distill: "))
    assert f"held-out loss {stage['loss_before']:.4f} -> {stage['loss_after']:.4f} in 9 steps" in line
    assert '"nsamples": 6' in line and "then distillation" not in next(
        x for x in report.splitlines() if x.startswith("- gptq: "))
    # the distilled row's scales moved, its codes did not: its perplexity differs from the plain row's
    assert stage["kept"]  # these settings do improve the held-out loss: the trained scales went into the checkpoint
    assert rows["gptq2-distill"]["perplexity"][0]["ppl"] != rows["gptq"]["perplexity"][0]["ppl"]


def test_pareto_front_keeps_only_rows_nothing_beats():
    from llmbin.compare.rows import pareto_front

    def row(label, mb, value):
        return {"label": label, "size": {"file_bytes": mb * 1e6}, "perplexity": [ppl("t", value)]}

    rows = [row("a", 10, 50.0), row("b", 20, 40.0), row("c", 25, 45.0), row("d", 30, 30.0), row("e", 10, 60.0),
            row("f", 5, math.inf), {"label": "g", "error": "boom"}]
    assert pareto_front(rows, "t") == ["a", "b", "d"]  # c: b is smaller and better; e: a, same size, better


def test_a_gguf_file_is_a_row_scored_by_the_same_protocol(tiny_llama_dir, text_file, tmp_path, monkeypatch):
    """The bundled model's own Q4_1 GGUF against the same model through llmbin: same windows, same protocol, its
    file size and its matrices' bits per weight read from the file."""
    from llmbin.models.loading import bundled_gguf

    source = bundled_gguf("smollm2-135m")
    out = tmp_path / "c"
    points = drawn(monkeypatch)
    result = run("compare", "smollm2-135m", "--gguf", f"Q4_1={source}", "--dataset", text_file, "--nsamples", "2",
                 "--seqlen", "64", "--ppl", text_file, "--max-windows", "2", "-o", out)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    (row,) = results["methods"]
    assert row["kind"] == "gguf" and row["size"]["file_bytes"] == source.stat().st_size
    assert row["size"]["tensor_types"]["Q4_1"] == 210 and 4.9 < row["bits"]["bpw_all_in"] < 5.1  # Q4_1: 5 bits/w
    # Q4_1's weights in float: within a few percent of the float source's perplexity on the same windows
    ref = results["reference"]["perplexity"][0]
    assert row["perplexity"][0]["windows"] == ref["windows"] == 2
    assert abs(row["perplexity"][0]["ppl"] / ref["ppl"] - 1) < 0.05
    assert "llama.cpp GGUF `SmolLM2-135M-Instruct.Q4_1.gguf`" in (out / "report.md").read_text()
    assert points()[-1] == [(round(row["size"]["file_bytes"] / 1e6, 4), round(row["perplexity"][0]["ppl"], 4))]


def test_sensitivity_table_is_each_linears_output_error_on_its_calibration_inputs(tiny_llama_dir, text_file, tmp_path):
    """The report's per-layer table against the relative output error computed here for layer 0's q_proj, from the
    packed weight and the inputs the float model gives that linear on the same calibration windows."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llmbin
    from llmbin.data import calibration_windows, load_text, token_stream

    out = tmp_path / "c"
    result = run("compare", tiny_llama_dir, "--methods", "gptq", "--set", "gptq.bits=2", "--set", "gptq.group_size=32",
                 "--dataset", text_file, "--nsamples", "4", "--seqlen", "32", "--ppl", text_file, "--max-windows", "2",
                 "--keep-checkpoints", "-o", out)
    assert result.exit_code == 0, result.output
    (row,) = json.loads((out / "results.json").read_text())["methods"]
    assert len(row["sensitivity"]) == 14 and "pipeline" in row["recipe"] and "sensitivity" not in row["recipe"]["pipeline"]
    report = (out / "report.md").read_text()
    assert "Sensitivity of gptq" in report and "| layer | q_proj | k_proj | v_proj | o_proj |" in report
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = calibration_windows(token_stream(AutoTokenizer.from_pretrained(tiny_llama_dir),
                                           load_text(str(text_file), split="calibration")), 4, 32, 0)
    seen = []
    hook = model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    with torch.no_grad():
        model(ids)
    hook.remove()
    x = torch.cat(seen).reshape(-1, seen[0].shape[-1])
    w = model.model.layers[0].self_attn.q_proj.weight.detach()
    packed, _ = llmbin.load(out / "checkpoints" / "gptq")
    q = packed.model.layers[0].self_attn.q_proj.packed_format().dequantize()
    expected = float(((x @ (w - q).T) ** 2).sum() / ((x @ w.T) ** 2).sum())
    assert row["sensitivity"]["model.layers.0.self_attn.q_proj"] == pytest.approx(expected, rel=1e-3)


def test_rows_of_an_older_run_stay_valid_when_recipes_gain_a_setting_at_its_default():
    from llmbin.compare.run import same_recipe

    old = {"params": {"bits": 4}, "calibration": {"nsamples": 8}}
    assert same_recipe(old, {"params": {"bits": 4}, "calibration": {"nsamples": 8, "selfgen_share": 0.0}})
    assert not same_recipe(old, {"params": {"bits": 4}, "calibration": {"nsamples": 8, "selfgen_share": 0.5}})
    assert not same_recipe(old, {"params": {"bits": 3}, "calibration": {"nsamples": 8}})
    assert not same_recipe({**old, "gone": 1}, {"params": {"bits": 4}, "calibration": {"nsamples": 8}})


def test_a_finished_checkpoint_is_a_row_scored_by_the_same_protocol(tiny_llama_dir, text_file, tmp_path):
    """A checkpoint quantized earlier joins the comparison as it is: its perplexity equals `llmbin.evaluate_ppl` on the
    loaded checkpoint over the same windows, its size the bytes of its safetensors files; a second run reuses it."""
    import llmbin
    from llmbin import Recipe

    ckpt = tmp_path / "made-earlier"
    llmbin.quantize(str(tiny_llama_dir), Recipe.create("rtn", {"bits": 3},
                                                        calibration={"dataset": str(text_file), "nsamples": 2,
                                                                     "seqlen": 32}), out=ckpt, verbose=False)
    out = tmp_path / "c"
    args = ["compare", tiny_llama_dir, "--checkpoint", f"rtn3={ckpt}", "--dataset", text_file, "--nsamples", "2",
            "--seqlen", "32", "--ppl", text_file, "--max-windows", "2", "-o", out]
    result = run(*args)
    assert result.exit_code == 0, result.output
    (row,) = json.loads((out / "results.json").read_text())["methods"]
    assert row["kind"] == "checkpoint" and row["method"] == "rtn" and row["recipe"]["params"]["bits"] == 3
    assert row["size"]["file_bytes"] == sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    # the same two windows scored here by hand: the packed model through transformers, next-token NLL, exp of the mean
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmbin.data import load_text, token_stream

    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    ids = token_stream(AutoTokenizer.from_pretrained(ckpt), load_text(str(text_file), split="evaluation"))
    windows = torch.as_tensor(ids[: 2 * 32]).view(2, 32)
    with torch.no_grad():
        logits = model(input_ids=windows).logits[:, :-1]
    direct = math.exp(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)).item())
    assert abs(row["perplexity"][0]["ppl"] / direct - 1) < 1e-5
    assert "the llmbin checkpoint `made-earlier`" in (out / "report.md").read_text()
    again = run(*args, "--resume")
    assert again.exit_code == 0 and "rtn3: reused from the previous results.json" in again.output


def test_a_checkpoint_row_must_be_an_llmbin_checkpoint(tiny_llama_dir, text_file, tmp_path):
    result = run("compare", tiny_llama_dir, "--checkpoint", f"x={tiny_llama_dir}", "--dataset", text_file, "--ppl",
                 text_file, "-o", tmp_path / "c")
    assert result.exit_code == 2 and "not an llmbin checkpoint directory" in result.output
