"""The distillation stage: train every continuous tensor of every packed linear against a cached teacher.

Codes stay frozen; each quantized linear is swapped for a TrainableQuantLinear; Adam (cosine-decayed
step) minimises the deviation-aware loss (loss.py) on the training windows, one window batch per
step; decoder layers are gradient-checkpointed (models/patching.py: only their inputs are kept between
forward and backward) when keeping every layer's activations would pass 2 GiB (distill.checkpointing).
The held-out loss is measured before, every `eval_every` steps and after; the best state wins, is rounded
to float16 (the stored precision) and measured again; if that does not beat the starting loss the original
tensors stay. Every `save_every` steps the state (step, parameters, Adam moments, best state) goes to
`state_path`, so a killed stage resumes where it stopped.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import LlmbinError
from ..formats import PackedFormat
from ..host.files import digest, load_tensors, save_tensors
from ..host.memory import peak_rss_mb, release_freed_memory
from ..methods.solvers.training import compute_dtype
from ..models.patching import checkpointed, eager_attention_on_cpu
from ..models.walk import decoder_layers, set_submodule
from .data import DistillWindows
from .loss import TeacherCache, distill_loss
from .options import ACTIVATIONS_BUDGET, DistillOptions
from .trainable import TrainableQuantLinear

STATE_VERSION = 1


@dataclass
class DistillRun:
    formats: dict[str, PackedFormat]  # the packed formats after the stage (trained, or the originals if not kept)
    modules: dict[str, TrainableQuantLinear]  # installed in the student, holding exactly `formats`
    stats: dict = field(default_factory=dict)


def layer_stack(model, names) -> list:
    """The decoder layers holding the quantized linears: the ModuleList entries on their qualified names' paths."""
    layers = {}
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent = model.get_submodule(".".join(parts[:i - 1])) if i > 1 else model
            if isinstance(parent, torch.nn.ModuleList):
                layers[".".join(parts[:i])] = parent[int(parts[i - 1])]
                break
    if not layers:
        _, stack = decoder_layers(model)
        return list(stack)
    return list(layers.values())


def kept_activation_bytes(model, formats: dict[str, PackedFormat], options: DistillOptions) -> int:
    """What a step keeps for its backward when no layer is recomputed: per token and layer ~14 float32 vectors of
    the widest projection (inputs of norms, products and the MLP's gates), and the eager attention's probabilities
    (float32 and bf16, every head)."""
    hidden = model.get_input_embeddings().embedding_dim
    widest = max([hidden] + [f.out_features for f in formats.values()])
    heads = getattr(model.config, "num_attention_heads", 1)
    per_layer = options.seqlen * (14 * widest * 4 + heads * options.seqlen * 6)
    return options.batch_size * len(layer_stack(model, formats)) * per_layer


def recomputes_layers(model, formats: dict[str, PackedFormat], options: DistillOptions) -> bool:
    if options.checkpointing != "auto":
        return options.checkpointing == "always"
    return kept_activation_bytes(model, formats, options) > ACTIVATIONS_BUDGET


class Stage:
    def __init__(self, student, formats: dict[str, PackedFormat], windows: DistillWindows, cache: TeacherCache,
                 options: DistillOptions, device="cpu", log=None, state_path: str | Path | None = None):
        self.student, self.formats, self.windows, self.cache = student, formats, windows, cache
        self.options, self.device, self.log = options, torch.device(device), log
        self.dtype = compute_dtype(self.device, options.precision)  # bf16 under autocast, or float32
        self.state_path = Path(state_path) if state_path else None
        self.names = sorted(formats)
        self.n_train = len(windows.train)
        self.total = options.steps(self.n_train)

    def note(self, message: str) -> None:
        if self.log is not None:
            self.log.note(message)

    # -- setup -------------------------------------------------------------------------
    def install(self) -> None:
        release_freed_memory()  # the teacher pass's freed heap (the teacher itself, its logits), before training
        self.frozen = [(p, p.requires_grad) for p in self.student.parameters()]
        for p, _ in self.frozen:
            p.requires_grad_(False)
        self.student.to(self.device).eval()
        self.modules = {}
        for name in self.names:
            bias = getattr(self.student.get_submodule(name), "bias", None)
            self.modules[name] = TrainableQuantLinear(self.formats[name], bias, self.device, self.dtype)
            set_submodule(self.student, name, self.modules[name])
        self.params = [m.deltas[k] for n in self.names for m in [self.modules[n]] for k in m.kinds]
        self.fingerprint = digest([STATE_VERSION, asdict(self.options), self.names,
                                   [self.formats[n].meta() for n in self.names], self.windows.all(),
                                   [t.float() for n in self.names for t in self.formats[n].floats().values()]])

    def deltas(self) -> list[torch.Tensor]:
        return [p.detach().clone().cpu() for p in self.params]

    @torch.no_grad()
    def set_deltas(self, values) -> None:
        for p, v in zip(self.params, values):
            p.copy_(v.to(p.device))

    # -- loss --------------------------------------------------------------------------
    def autocast(self):
        """bf16 matmuls where the device has them (the trained tensors, Adam and the loss stay float32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16)

    @contextmanager
    def held_weights(self):
        for m in self.modules.values():  # every buffer first, side by side in the heap (TrainableQuantLinear.allocate)
            m.allocate()
        for m in self.modules.values():
            m.hold()
        try:
            yield
        finally:
            for m in self.modules.values():
                m.release()

    def batch_loss(self, ids: torch.Tensor, target: TeacherCache) -> torch.Tensor:
        with self.autocast():
            logits = self.student(input_ids=ids.to(self.device), use_cache=False).logits
        return distill_loss(logits.float(), target.to(self.device), ids.to(self.device), self.options.temperature,
                            self.options.gamma, self.options.ce_weight)

    @torch.no_grad()
    def held_out_loss(self) -> float:
        first, total = self.n_train, 0.0
        held = self.windows.held_out
        with self.held_weights():
            for start in range(0, len(held), self.options.batch_size):
                idx = torch.arange(first + start, first + min(start + self.options.batch_size, len(held)))
                total += float(self.batch_loss(held[start:start + len(idx)], self.cache.select(idx))) * len(idx)
        return total / len(held)

    # -- state -------------------------------------------------------------------------
    def save_state(self, step, opt, best, best_loss, loss_before, history, running) -> None:
        """Step, trained tensors, Adam's moments and the best state: tensors in safetensors, the rest as JSON."""
        if self.state_path is None:
            return
        tensors = {f"delta.{i}": d for i, d in enumerate(self.deltas())}
        tensors.update({f"best.{i}": d for i, d in enumerate(best or [])})
        adam = opt.state_dict()
        moments = {}
        for index, entry in adam["state"].items():
            for name, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"adam.{index}.{name}"] = value
                else:
                    moments.setdefault(str(index), {})[name] = value
        info = {"version": STATE_VERSION, "fingerprint": self.fingerprint, "step": step, "has_best": best is not None,
                "best_loss": best_loss, "loss_before": loss_before, "history": history, "running": running,
                "param_groups": adam["param_groups"], "adam_scalars": moments}
        save_tensors(self.state_path, tensors, info)

    def load_state(self):
        if self.state_path is None or not self.state_path.exists():
            return None
        tensors, info = load_tensors(self.state_path)
        if info.get("fingerprint") != self.fingerprint or info.get("version") != STATE_VERSION:
            raise LlmbinError(f"cannot resume distillation: {self.state_path} was saved for other options, data or "
                              "checkpoint; delete it to start the stage over")
        count = len(self.params)
        adam_state: dict = {}
        for key, value in tensors.items():
            if key.startswith("adam."):
                _, index, name = key.split(".", 2)
                adam_state.setdefault(int(index), {})[name] = value
        for index, scalars in info["adam_scalars"].items():
            adam_state.setdefault(int(index), {}).update(scalars)
        return {"step": info["step"], "best_loss": info["best_loss"], "loss_before": info["loss_before"],
                "history": info["history"], "running": info["running"],
                "deltas": [tensors[f"delta.{i}"] for i in range(count)],
                "best": [tensors[f"best.{i}"] for i in range(count)] if info["has_best"] else None,
                "optimizer": {"state": adam_state, "param_groups": info["param_groups"]}}

    # -- run ---------------------------------------------------------------------------
    def order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.options.seed * 1000003 + epoch)
        return torch.randperm(self.n_train, generator=gen).tolist()

    def step_size(self, step: int) -> float:
        """Linear warm-up over the first `warmup` share of the steps (Adam's first steps are sign-sized), then cosine."""
        warm = int(self.options.warmup * self.total)
        if step < warm:
            return self.options.lr * (step + 1) / (warm + 1)
        return self.options.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, self.total - warm)))

    def run(self) -> DistillRun:
        start_time = time.perf_counter()
        self.install()
        opt = torch.optim.Adam(self.params, lr=self.options.lr)
        state = self.load_state()
        recompute = recomputes_layers(self.student, self.formats, self.options)
        with checkpointed(layer_stack(self.student, self.names)) if recompute else nullcontext(), \
                eager_attention_on_cpu(self.student, self.device):
            running = None  # smoothed training loss, shown and logged
            if state is None:
                step, best, history = 0, None, []
                loss_before = best_loss = self.held_out_loss()
                history.append({"step": 0, "held_out": loss_before})
                self.note(f"distill: held-out loss before {loss_before:.4f} ({len(self.windows.held_out)} windows, "
                          f"{self.n_train} training windows of {self.options.seqlen} tokens, {self.total} steps)")
            else:
                step, best, best_loss, loss_before, history, running = (
                    state[k] for k in ("step", "best", "best_loss", "loss_before", "history", "running"))
                self.set_deltas(state["deltas"])
                opt.load_state_dict(state["optimizer"])
                self.note(f"distill: resumed at step {step}/{self.total} from {self.state_path}")
            per_epoch = -(-self.n_train // self.options.batch_size)
            bar = tqdm(total=self.total, initial=step, desc="distilling", unit="step",
                       disable=self.log is None or not getattr(self.log, "verbose", True))
            try:
                while step < self.total:
                    epoch, within = divmod(step, per_epoch)
                    idx = torch.tensor(self.order(epoch)[within * self.options.batch_size:(within + 1) * self.options.batch_size])
                    for group in opt.param_groups:
                        group["lr"] = self.step_size(step)
                    opt.zero_grad(set_to_none=False)  # gradients stay allocated: less heap churn per step
                    with self.held_weights():
                        loss_tensor = self.batch_loss(self.windows.train[idx], self.cache.select(idx))
                        loss_tensor.backward()
                        loss = loss_tensor.item()
                    opt.step()
                    del loss_tensor
                    step += 1
                    running = loss if running is None else 0.9 * running + 0.1 * loss
                    bar.update()
                    bar.set_postfix(loss=f"{running:.4f}", best=f"{best_loss:.4f}")
                    if step % self.options.eval_every == 0 or step == self.total:
                        held = self.held_out_loss()
                        history.append({"step": step, "held_out": held, "train": running})
                        if held < best_loss:
                            best, best_loss = self.deltas(), held
                        bar.set_postfix(loss=f"{running:.4f}", best=f"{best_loss:.4f}")
                        self.note(f"distill step {step}/{self.total}: train {running:.4f}, held-out {held:.4f} "
                                  f"(best {best_loss:.4f}), {time.perf_counter() - start_time:.0f} s")
                    if self.options.save_every and (step % self.options.save_every == 0 or step == self.total):
                        self.save_state(step, opt, best, best_loss, loss_before, history, running)
            finally:
                bar.close()
            # the best state, rounded to the stored precision, is what the checkpoint will hold
            if best is not None:
                self.set_deltas(best)
            trained = {n: self.modules[n].rounded_floats() for n in self.names}
            for n in self.names:
                self.modules[n].load_rounded(trained[n])
            loss_after = self.held_out_loss()
            kept = best is not None and loss_after < loss_before
            if not kept:
                for n in self.names:
                    self.modules[n].load_rounded(self.formats[n].floats())
            for n in self.names:  # the model handed back computes in float32, as the packed checkpoint does
                self.modules[n].compute_in(torch.float32)
        for p, flag in self.frozen:
            p.requires_grad_(flag)
        formats = {n: self.formats[n].with_floats(**trained[n]) if kept else self.formats[n] for n in self.names}
        stats = {"loss_before": loss_before, "loss_after": loss_after, "kept": kept,
                 "steps": step, "modules": len(self.names), "history": history,
                 "train_windows": list(self.windows.train.shape), "held_out_windows": list(self.windows.held_out.shape),
                 "tensors": sorted({f"{self.formats[n].name}.{k}" for n in self.names for k in self.modules[n].kinds}),
                 "seconds": round(time.perf_counter() - start_time, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
        self.note(f"distill: held-out loss {loss_before:.4f} -> {loss_after:.4f} "
                  f"({'kept' if kept else 'no gain, original tensors kept'}), {step} steps on {len(self.names)} "
                  f"linears in {stats['seconds']} s, peak RSS {stats['peak_rss_mb']:.0f} MB")
        return DistillRun(formats, self.modules, stats)
