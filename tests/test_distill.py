"""The generic distillation stage: loss weighting, disjoint data, frozen codes, packed == trained, CLI errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from llmbin.distill.data import disjoint_windows
from llmbin.distill.loss import distill_loss, targets_from_logits, token_terms
from llmbin.distill.options import DistillOptions
from llmbin.distill.trainable import TrainableQuantLinear
from llmbin.formats import BitPlaneFormat, UniformFormat
from llmbin.formats.masked import MaskedBinaryFormat


def full_kl(student_logits, teacher_logits):
    """KL(p || q) over the whole vocabulary, straight from the definition."""
    p = torch.softmax(teacher_logits.double(), -1)
    return (p * (p.log() - torch.log_softmax(student_logits.double(), -1))).sum(-1)


def test_ambiguous_token_kl_term_outweighs_confident_one_with_equal_kl():
    V = 16
    gen = torch.Generator().manual_seed(0)
    confident = torch.zeros(V)
    confident[3] = 8.0  # the teacher is sure of token 3
    ambiguous = torch.randn(V, generator=gen) * 0.1  # nearly uniform
    push = torch.randn(V, generator=gen)
    amb_student = ambiguous + push
    target_kl = float(full_kl(amb_student, ambiguous))
    lo, hi = 0.0, 50.0  # scale the confident token's deviation until its KL equals the ambiguous one's
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(full_kl(confident + mid * push, confident)) < target_kl else (lo, mid)
    conf_student = confident + lo * push
    teacher = torch.stack([confident, ambiguous])[None]
    student = torch.stack([conf_student, amb_student])[None]
    cache = targets_from_logits(teacher, topk=V)
    weight, kl = token_terms(student, cache, gamma=1.0)
    torch.testing.assert_close(kl[0, 0], kl[0, 1], rtol=1e-4, atol=1e-6)  # same deviation size
    assert weight[0, 1] * kl[0, 1] > 1.5 * weight[0, 0] * kl[0, 0]  # the ambiguous token's term dominates
    # the weight is the documented formula, from the teacher's own entropy
    p = torch.softmax(teacher[0], -1)
    entropy = -(p * p.log()).sum(-1)
    torch.testing.assert_close(weight[0], 1 + entropy / math.log(V))
    plain = distill_loss(student, cache, None, 1.0, gamma=0.0)
    weighted = distill_loss(student, cache, None, 1.0, gamma=1.0)
    torch.testing.assert_close(plain, kl.mean())
    assert weighted > plain


def test_topk_kl_is_exact_at_full_vocab_and_a_lower_bound_below():
    gen = torch.Generator().manual_seed(1)
    teacher, student = torch.randn(2, 5, 40, generator=gen) * 3, torch.randn(2, 5, 40, generator=gen) * 3
    exact = full_kl(student, teacher).float()
    _, kl_all = token_terms(student, targets_from_logits(teacher, topk=40), gamma=0.0)
    torch.testing.assert_close(kl_all, exact, rtol=1e-4, atol=1e-5)
    _, kl_top = token_terms(student, targets_from_logits(teacher, topk=8), gamma=0.0)
    assert torch.all(kl_top <= exact + 1e-5) and torch.all(kl_top >= 0)
    labels = torch.randint(0, 40, (2, 5), generator=gen)
    with_ce = distill_loss(student, targets_from_logits(teacher, topk=40), labels, 1.0, 0.0, ce_weight=0.5)
    ce = F.cross_entropy(student[:, :-1].reshape(-1, 40), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(with_ce, kl_all.mean() + 0.5 * ce)


def test_held_out_windows_never_overlap_training_windows():
    ids = torch.arange(10_000) * 7 % 9973
    for seed in range(5):
        w = disjoint_windows(ids, 20, 4, 128, seed)
        spans = [(s, s + 128) for s in w.train_starts + w.held_out_starts]
        covered = torch.zeros(ids.numel(), dtype=torch.int64)
        for a, b in spans:
            covered[a:b] += 1
        assert covered.max() == 1 and len(w.train) == 20 and len(w.held_out) == 4
        for window, start in zip(torch.cat([w.train, w.held_out]), w.train_starts + w.held_out_starts):
            assert torch.equal(window, ids[start:start + 128])
    short = disjoint_windows(ids, 500, 4, 128, 0)  # 78 windows available: fewer training ones, still disjoint
    assert len(short.train) + len(short.held_out) == 78 and not set(short.train_starts) & set(short.held_out_starts)


def formats_for_test():
    gen = torch.Generator().manual_seed(2)
    n, k = 6, 70
    planes = torch.rand(2, n, k - 6, generator=gen) > 0.5
    perm = torch.randperm(k, generator=gen).to(torch.int32)
    bitplane = BitPlaneFormat(planes, torch.randn(2, n, 2, generator=gen).half(), torch.randn(n, 2, generator=gen).half(),
                              64, k, 1.6, in_scale=(torch.rand(k, generator=gen) + 0.5).half(),
                              out_scale=(torch.rand(n, generator=gen) + 0.5).half(), perm=perm,
                              salient_codes=torch.randint(0, 16, (n, 6), generator=gen, dtype=torch.uint8),
                              salient_scale=torch.rand(n, generator=gen).half(),
                              salient_zero=torch.randint(0, 16, (n,), generator=gen).half())
    mask = torch.rand(n, k, generator=gen) < 0.1
    masked = MaskedBinaryFormat(torch.rand(n, k, generator=gen) > 0.5, torch.rand(n, generator=gen).half(),
                                torch.randn(n, generator=gen).half(), mask,
                                torch.randint(0, 256, (int(mask.sum()),), generator=gen), torch.rand(n, generator=gen).half(),
                                torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8), 8, 1.7)
    uniform = UniformFormat(torch.randint(0, 4, (n, k), generator=gen), torch.rand(n, 2, generator=gen).half(),
                            torch.randint(0, 4, (n, 2), generator=gen, dtype=torch.uint8), 2, 64)
    grouped = BitPlaneFormat(planes, torch.randn(2, n, 2, generator=gen).half(), torch.randn(n, 2, generator=gen).half(),
                             32, k, 1.6, in_scale=(torch.rand(k, generator=gen) + 0.5).half(),
                             out_scale=(torch.rand(n, generator=gen) + 0.5).half(), perm=perm, salient_codes=torch.randint(0, 16, (n, 6), generator=gen, dtype=torch.uint8),
                             salient_scale=torch.rand(n, generator=gen).half(),
                             salient_zero=torch.randint(0, 16, (n,), generator=gen).half())
    return {"bitplane": bitplane, "bitplane-grouped": grouped, "masked": masked, "uniform": uniform}


@pytest.mark.parametrize("kind", ["bitplane", "bitplane-grouped", "masked", "uniform"])
def test_trainable_linear_starts_at_the_format_and_trains_every_float_tensor(kind):
    fmt = formats_for_test()[kind]
    bias = torch.randn(fmt.out_features)
    module = TrainableQuantLinear(fmt, bias, "cpu")
    assert torch.equal(module.weight().detach(), fmt.dequantize())
    x = torch.randn(3, fmt.in_features, generator=torch.Generator().manual_seed(3))
    # the product (a bit-plane format's in its stored column order) is the dense product of the format's matrix
    reference = F.linear(x, fmt.dequantize(), bias)
    assert (module(x) - reference).abs().max() < 1e-5 * reference.abs().max()
    module.hold()
    assert (module(x) - reference).abs().max() < 1e-5 * reference.abs().max()
    module.release()
    # the stored-order path where the scale groups tile the binarized columns exactly; the dense path elsewhere
    assert (module.stored_order is not None) == (kind == "bitplane-grouped")
    module.compute_in(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (module(x).float() - reference).abs().max() < 2e-2 * reference.abs().max()
    module.compute_in(torch.float32)
    module(x).pow(2).sum().backward()
    assert set(module.deltas) == set(fmt.floats())
    for name, d in module.deltas.items():
        assert d.grad is not None and d.grad.abs().sum() > 0, name
    with torch.no_grad():
        for d in module.deltas.values():
            d.add_(0.01 * torch.randn(d.shape, generator=torch.Generator().manual_seed(4)))
    rounded = module.rounded_format(fmt)
    module.load_rounded(rounded.floats())
    assert torch.equal(module.weight().detach(), rounded.dequantize())  # the module computes the packed format
    for name, t in rounded.floats().items():
        assert t.dtype == torch.float16 and not torch.equal(t, fmt.floats()[name])
    for name, t in fmt.tensors().items():  # codes, planes, masks, zeros: byte-identical
        if name not in fmt.float_fields:
            assert torch.equal(rounded.tensors()[name], t), name


@pytest.mark.parametrize("kind", ["bitplane", "bitplane-grouped", "masked", "uniform"])
def test_a_held_weight_keeps_no_weight_sized_tensor_for_its_backward(kind):
    """A step holds every linear's weight until the backward: its graph must keep only the float tensors (a 1.5B
    model's step held ~2 more weights per linear), and its gradients equal those through the format's own matrix."""
    from torch.autograd.graph import saved_tensors_hooks

    from llmbin.distill.trainable import step_bytes

    fmt = formats_for_test()[kind]
    n, k = fmt.out_features, fmt.in_features
    module = TrainableQuantLinear(fmt, None, "cpu")
    probe = torch.randn(n, k, generator=torch.Generator().manual_seed(5))
    module.weight().mul(probe).sum().backward()  # reference: the dequantized format, natural column order
    expected = {name: d.grad.clone() for name, d in module.deltas.items()}
    module.zero_grad()
    saved = []
    with saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        module.hold()
    weight, order = module.held
    assert max(saved, default=0) < n * k
    (weight * (probe if order is None else probe[:, order])).sum().backward()
    for name, d in module.deltas.items():
        assert torch.allclose(d.grad, expected[name], rtol=1e-4, atol=1e-5), name
    module.hold()  # the next step refills the same [out, in] buffer: no new weight-sized allocation per step
    assert module.held[0].data_ptr() == weight.data_ptr() and module.held[0].shape == (n, k)
    # what the pre-flight estimate counts: every distinct storage the module holds besides its float32 tensors
    import dataclasses

    def tensors(value):
        if isinstance(value, torch.Tensor):
            return [value]
        if dataclasses.is_dataclass(value):
            return [t for f in dataclasses.fields(value) for t in tensors(getattr(value, f.name))]
        return []
    held = tensors(module.frozen) + [weight]
    if module.stored_order is not None:
        held += [module.stored_order.planes, module.stored_order.salient]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held}
    assert step_bytes(fmt, weight.element_size()) == sum(storages.values())


# -- end to end on tiny models ---------------------------------------------------------------
RECIPES = {
    "ptq161": ("ptq161", {"epochs": 1, "precision": "fp32", "bpw": 3.0}, "bitplane"),
    "pbllm": ("pbllm", {}, "masked"),
    "gptq": ("gptq", {"bits": 2, "group_size": 32}, "uniform"),
}
SMALL = dict(nsamples=6, eval_nsamples=2, seqlen=32, epochs=3, batch_size=2, lr=0.02, eval_every=3, save_every=2, topk=64)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_llama_dir, text_file):
    import llmbin
    from llmbin.recipe import Recipe

    made = {}

    def get(label):
        if label not in made:
            method, params, _ = RECIPES[label.removesuffix("+int5")]
            out = tmp_path_factory.mktemp(label) / "packed"
            embeddings = "int5-g32" if label.endswith("+int5") else "none"  # packed embeddings stay frozen
            recipe = Recipe.create(method, params, {"dataset": str(text_file), "nsamples": 4, "seqlen": 32},
                                   pipeline={"embeddings": embeddings})
            llmbin.quantize(str(tiny_llama_dir), recipe, out=out, verbose=False)
            made[label] = out
        return made[label]
    return get


def stored_tensors(path):
    from llmbin.checkpoint import shard_files

    out = {}
    for shard in shard_files(path):
        with safe_open(str(shard), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


@pytest.mark.parametrize("label", list(RECIPES))
def test_distilled_checkpoint_equals_trained_model_and_keeps_codes(label, quantized, tmp_path):
    import transformers

    import llmbin

    source = quantized(label)
    out = tmp_path / "distilled"
    outcome = llmbin.api.distill(source, out, options=DistillOptions(**SMALL), verbose=False)
    s = outcome.stats
    assert s["kept"] and s["loss_after"] < s["loss_before"]
    assert all(t.split(".")[0] == RECIPES[label][2] for t in s["tensors"])
    ids = torch.randint(0, 49152, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        trained = outcome.model(input_ids=ids).logits
        loaded = transformers.AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
        before = transformers.AutoModelForCausalLM.from_pretrained(source)(input_ids=ids).logits
    assert (loaded - trained).abs().max() < 1e-5
    assert (before - trained).abs().max() > 1e-3  # the distillation did change the model
    old, new = stored_tensors(source), stored_tensors(out)
    assert old.keys() == new.keys()
    changed = 0
    for key, tensor in old.items():
        if key.rsplit(".", 1)[-1] in ("scales", "offsets", "in_scale", "out_scale", "salient_scale") and \
                not key.endswith(("input_layernorm.weight",)):
            changed += not torch.equal(tensor, new[key])
            assert new[key].dtype == tensor.dtype == torch.float16
        else:  # codes, planes, masks, permutations, zero points and every unquantized tensor
            assert torch.equal(tensor, new[key]), key
    assert changed > 0
    config = llmbin.checkpoint.read_quant_config(out)
    assert config["distill"]["kept"] and config["distill"]["options"]["loss"] == "entropy_kl"
    assert "1 + gamma * H_t / log V" in (out / "README.md").read_text()


def test_recomputed_layers_and_kept_activations_train_the_same_tensors(quantized, tmp_path):
    """Every layer recomputed in the backward, or every activation kept (small models): the same gradients, so the
    same trained tensors; and the student's attention implementation is its own again after the stage (it trains
    with the eager one on a CPU)."""
    import llmbin
    from llmbin.checkpoint.reader import load_checkpoint

    source = quantized("ptq161")
    own = load_checkpoint(source)[0].config._attn_implementation
    runs = {}
    for mode in ("always", "never"):
        options = DistillOptions(**SMALL, checkpointing=mode, precision="fp32")
        outcome = llmbin.api.distill(source, tmp_path / mode, options=options, verbose=False)
        assert outcome.stats["kept"]
        assert outcome.model.config._attn_implementation == own
        runs[mode] = stored_tensors(tmp_path / mode)
    before = stored_tensors(source)
    trained = [k for k in before if not torch.equal(before[k], runs["never"][k])]
    assert trained
    for key in trained:  # float16 write-back: at most one unit in the last place apart
        a, b = runs["always"][key].float(), runs["never"][key].float()
        assert torch.allclose(a, b, rtol=2e-3, atol=1e-6), key


def test_packed_embeddings_stay_frozen_and_the_checkpoint_equals_the_trained_model(quantized, tmp_path):
    """A checkpoint with a packed (tied) embedding/head: the stage trains through the head's dequantized matrix,
    stores the same embedding bytes, and what it writes computes the trained model's logits."""
    import transformers

    import llmbin

    source = quantized("gptq+int5")
    assert llmbin.checkpoint.read_quant_config(source)["embeddings"]["input"]
    outcome = llmbin.api.distill(source, tmp_path / "d", options=DistillOptions(**SMALL), verbose=False)
    assert outcome.stats["kept"] and outcome.stats["loss_after"] < outcome.stats["loss_before"]
    assert not any("embed" in n or "lm_head" in n for n in outcome.formats)
    ids = torch.randint(0, 49152, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trained = outcome.model(input_ids=ids).logits
        loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "d")(input_ids=ids).logits
    assert (loaded - trained).abs().max() < 1e-4 * trained.abs().max()
    old, new = stored_tensors(source), stored_tensors(tmp_path / "d")
    embedding = [k for k in old if "embed_tokens" in k]
    assert embedding and all(torch.equal(old[k], new[k]) for k in embedding)
    assert any(not torch.equal(old[k], new[k]) for k in old if k.endswith("scales") and "layers" in k)


def test_missing_teacher_stops_with_one_line_naming_the_flag(quantized, tmp_path, tiny_llama_dir):
    import json
    import shutil

    from click.testing import CliRunner

    from llmbin.cli import main

    source = tmp_path / "moved"
    shutil.copytree(quantized("gptq"), source)
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"]["provenance"]["model"] = str(tmp_path / "gone")
    (source / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["distill", str(source), "-o", str(out), "-q"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--teacher" in lines[0] and "gone" in lines[0]
    assert not out.exists() and not (tmp_path / ".out.distill-partial").exists()
    ok = CliRunner().invoke(main, ["distill", str(source), "-o", str(out), "-q", "--teacher", str(tiny_llama_dir),
                                   "--set", "nsamples=2", "--set", "eval_nsamples=1", "--set", "seqlen=16"])
    assert ok.exit_code == 0, ok.output
    assert out.is_dir()


def test_killed_distillation_resumes_from_its_saved_state(quantized, tmp_path, monkeypatch):
    import llmbin
    from llmbin.distill.stage import Stage

    source = quantized("gptq")
    options = dict(SMALL, save_every=1)
    reference = llmbin.api.distill(source, tmp_path / "ref", options=DistillOptions(**options), verbose=False)
    real, calls = Stage.batch_loss, []

    def dies_at_step_4(self, ids, target):
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 4:
                raise KeyboardInterrupt  # a kill in the middle of step 4
        return real(self, ids, target)

    monkeypatch.setattr(Stage, "batch_loss", dies_at_step_4)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        llmbin.api.distill(source, out, options=DistillOptions(**options), verbose=False)
    assert not out.exists() and (tmp_path / ".out.distill-partial" / "distill-state.safetensors").exists()
    with pytest.raises(llmbin.errors.LlmbinError, match="--resume"):
        llmbin.api.distill(source, out, options=DistillOptions(**options), verbose=False)
    monkeypatch.setattr(Stage, "batch_loss", real)
    resumed = llmbin.api.distill(source, out, options=DistillOptions(**options), verbose=False, resume=True)
    assert resumed.stats["steps"] == reference.stats["steps"] and len(calls) == 4
    assert resumed.stats["history"] == reference.stats["history"]
    new, ref = stored_tensors(out), stored_tensors(tmp_path / "ref")
    assert all(torch.equal(new[k], ref[k]) for k in ref)  # same result as the uninterrupted run
    assert not (tmp_path / ".out.distill-partial").exists()


def test_preflight_refuses_naming_the_flags(quantized, tmp_path):
    import llmbin

    out = tmp_path / "out"
    with pytest.raises(llmbin.errors.LlmbinError, match="distill.batch_size, distill.seqlen or distill.topk"):
        llmbin.api.distill(quantized("gptq"), out, options=DistillOptions(**SMALL), verbose=False, memory_budget_mb=1)
    assert not out.exists() and not (tmp_path / ".out.distill-partial").exists()


def test_quantize_with_distill_section_resumes_a_killed_stage(tiny_llama_dir, text_file, tmp_path, monkeypatch):
    import llmbin
    from llmbin.distill.stage import Stage
    from llmbin.recipe import Recipe

    recipe = Recipe.create("gptq", {"bits": 2, "group_size": 32}, {"dataset": str(text_file), "nsamples": 4, "seqlen": 32},
                           distill=dict(SMALL, enabled=True, save_every=1))
    reference = llmbin.quantize(str(tiny_llama_dir), recipe, out=tmp_path / "ref", verbose=False)
    real, calls = Stage.batch_loss, []

    def dies_at_step_5(self, ids, target):
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 5:
                raise KeyboardInterrupt
        return real(self, ids, target)

    monkeypatch.setattr(Stage, "batch_loss", dies_at_step_5)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        llmbin.quantize(str(tiny_llama_dir), recipe, out=out, verbose=False)
    monkeypatch.setattr(Stage, "batch_loss", real)
    resumed = llmbin.quantize(str(tiny_llama_dir), recipe, out=out, verbose=False, resume=True)
    notes = [r["note"] for r in resumed.log.records if "note" in r]
    assert any("resumed at step 4/" in n for n in notes) and any("teacher targets reused" in n for n in notes)
    assert reference.info["distill"]["kept"] and resumed.info["distill"] == reference.info["distill"]
    new, ref = stored_tensors(out), stored_tensors(tmp_path / "ref")
    assert new.keys() == ref.keys() and all(torch.equal(new[k], ref[k]) for k in ref)
    assert not any(p.name.startswith("distill-") for p in out.iterdir())


@pytest.mark.parametrize("data", ["calibration", "selfgen"])
def test_a_stale_teacher_cache_is_refused(quantized, tmp_path, monkeypatch, data):
    """Resuming with other settings must not reuse targets the teacher computed for the old ones."""
    import llmbin
    from llmbin.distill.stage import Stage

    source = quantized("gptq")
    options = dict(SMALL, data=data, seqlen=16, nsamples=4)

    def dies(self, ids, target):
        raise KeyboardInterrupt  # killed at the first training step, after the teacher pass

    monkeypatch.setattr(Stage, "batch_loss", dies)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        llmbin.api.distill(source, out, options=DistillOptions(**options), verbose=False)
    cache = tmp_path / ".out.distill-partial" / "distill-teacher.safetensors"
    assert cache.exists()
    with pytest.raises(llmbin.errors.LlmbinError, match="teacher targets for other settings") as err:
        llmbin.api.distill(source, out, options=DistillOptions(**{**options, "topk": 32}), verbose=False, resume=True)
    assert "\n" not in str(err.value)
    import llmbin.distill.teacher as teacher

    def teacher_pass(*args, **kwargs):
        raise AssertionError("the teacher ran again although its targets were cached for these settings")

    monkeypatch.setattr(teacher, "build_cache", teacher_pass)
    with pytest.raises(KeyboardInterrupt):  # the same settings reuse the cache and reach training
        llmbin.api.distill(source, out, options=DistillOptions(**options), verbose=False, resume=True)


def test_fill_tops_up_short_text_with_windows_the_teacher_writes(quantized, tmp_path, monkeypatch, text_file, capsys):
    import transformers

    import llmbin
    from llmbin.distill.data import text_windows

    monkeypatch.setenv("LLMBIN_CACHE", str(tmp_path / "cache"))
    source = quantized("gptq")
    held = text_windows(str(text_file), transformers.AutoTokenizer.from_pretrained(source), 10_000, 2, 16, 0)
    options = dict(SMALL, seqlen=16, nsamples=len(held.train) + 5, epochs=1, batch_size=8, eval_every=100)
    capsys.readouterr()
    outcome = llmbin.api.distill(source, tmp_path / "filled", options=DistillOptions(**options, fill="selfgen"))
    assert outcome.stats["train_windows"] == [len(held.train) + 5, 16]
    said = capsys.readouterr()
    notes = [line for line in (said.out + said.err).splitlines() if "distill.fill" in line or "instead of" in line]
    assert notes == [f"[llmbin] distill: {text_file} holds {len(held.train)} training windows of 16 tokens; the "
                     "teacher writes the other 5 (distill.fill=selfgen)"]
