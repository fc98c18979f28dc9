"""Recipes: method + parameters + calibration + pipeline options. Versioned, YAML in/out, unknown keys rejected.

`--set key=value` addresses method parameters by name (`salient_ratio=0.2`, `preprocess.enabled=true`)
and the other sections by prefix (`calibration.nsamples=64`, `pipeline.true_sequential=true`,
`distill.enabled=true`). Recipes written before the `distill:` section existed kept DB-LLM's
distillation options under `params.distill`; those are read into the `distill:` section.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from ..calibrate.options import Calibration, PipelineOptions
from ..distill.options import DistillOptions
from ..errors import LlmbinError
from ..methods import get_method

RECIPE_VERSION = 1
SHIPPED_DIR = Path(__file__).parent.parent / "recipes"  # the recipes `--recipe NAME` finds


def shipped_recipe_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def _coerce(value, like):
    if not isinstance(value, str):
        return value
    if isinstance(like, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise LlmbinError(f"expected true/false, got {value!r}")
    try:
        if isinstance(like, int):
            return int(value)
        if isinstance(like, float):
            return float(value)
    except ValueError:
        raise LlmbinError(f"expected a number, got {value!r}") from None
    if like is None:
        return yaml.safe_load(value)
    return value


def set_field(obj, dotted: str, value, where: str):
    """Set obj.a.b = value on nested dataclasses, coercing strings to the field's type."""
    head, _, rest = dotted.partition(".")
    names = {f.name for f in dataclasses.fields(obj)}
    if head not in names:
        raise LlmbinError(f"unknown {where} key {dotted!r}; known keys: {', '.join(sorted(names))}")
    current = getattr(obj, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise LlmbinError(f"{where} key {head!r} has no sub-key {rest!r}")
        set_field(current, rest, value, f"{where}.{head}")
    elif dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise LlmbinError(f"{where} key {head!r} takes a mapping of sub-keys")
        for k, v in value.items():
            set_field(current, k, v, f"{where}.{head}")
    else:
        try:
            setattr(obj, head, _coerce(value, current))
        except LlmbinError as exc:
            raise LlmbinError(f"{where} key {dotted!r}: {exc}") from None


@dataclass
class Recipe:
    method: str
    params: object  # the method's parameter dataclass
    calibration: Calibration = field(default_factory=Calibration)
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    version: int = RECIPE_VERSION
    distill: DistillOptions = field(default_factory=DistillOptions)

    @classmethod
    def create(cls, method: str, params: dict | None = None, calibration: dict | None = None,
               pipeline: dict | None = None, distill: dict | None = None) -> "Recipe":
        recipe = cls(method, get_method(method).params_cls())
        params = dict(params or {})
        legacy = {k: params.pop(k) for k in list(params) if k == "distill" or k.startswith("distill.")}
        for k, v in legacy.items():  # DB-LLM's former params.distill: now the recipe's distill section
            recipe.set(k, v)
        for k, v in params.items():
            set_field(recipe.params, k, v, f"{method} parameter")
        for k, v in (calibration or {}).items():
            set_field(recipe.calibration, k, v, "calibration")
        for k, v in (pipeline or {}).items():
            set_field(recipe.pipeline, k, v, "pipeline")
        for k, v in (distill or {}).items():
            set_field(recipe.distill, k, v, "distill")
        recipe.distill.check()
        return recipe

    def set(self, key: str, value) -> None:
        section, _, rest = key.partition(".")
        if section in ("calibration", "pipeline", "distill") and rest:
            set_field(getattr(self, section), rest, value, section)
            if section == "distill":
                self.distill.check()
        elif section == "distill":
            set_field(self, "distill", value, "recipe")
            self.distill.check()
        else:
            set_field(self.params, key, value, f"{self.method} parameter")

    def to_dict(self) -> dict:
        return {"version": self.version, "method": self.method, "params": asdict(self.params),
                "calibration": asdict(self.calibration), "pipeline": asdict(self.pipeline),
                "distill": asdict(self.distill)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "recipe") -> "Recipe":
        if not isinstance(data, dict) or "method" not in data:
            raise LlmbinError(f"{source}: a recipe is a mapping with at least a 'method' key")
        unknown = set(data) - {"version", "method", "params", "calibration", "pipeline", "distill"}
        if unknown:
            raise LlmbinError(f"{source}: unknown recipe key(s) {', '.join(sorted(unknown))}; "
                              "allowed: version, method, params, calibration, pipeline, distill")
        version = data.get("version", RECIPE_VERSION)
        if version != RECIPE_VERSION:
            raise LlmbinError(f"{source}: recipe version {version} is not supported (this llmbin reads version {RECIPE_VERSION})")
        return cls.create(data["method"], data.get("params"), data.get("calibration"), data.get("pipeline"),
                          data.get("distill"))

    @classmethod
    def load(cls, ref: str) -> "Recipe":
        """A YAML path, or the name of a recipe shipped in llmbin/recipes/ (e.g. ptq161)."""
        path = Path(ref)
        if not path.exists():
            path = SHIPPED_DIR / f"{ref.removesuffix('.yaml')}.yaml"
        if not path.exists():
            raise LlmbinError(f"recipe {ref!r} is neither a file nor a shipped recipe "
                              f"({', '.join(shipped_recipe_names())})")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise LlmbinError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def default_for(cls, method: str) -> "Recipe":
        """What `--method NAME` means without --recipe: the shipped recipe of the same name where there is one
        (ptq161: 3 epochs and preprocessing, tuned for CPU time), else the method's own parameter defaults."""
        shipped = SHIPPED_DIR / f"{method}.yaml"
        if shipped.exists():
            recipe = cls.load(str(shipped))
            if recipe.method == method:
                return recipe
        return cls.create(method)

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
