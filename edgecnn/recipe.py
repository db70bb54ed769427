"""The recipe: one YAML file that says what to build, validated before anything runs.

    name: quickstart            # run directory: runs/<name>
    seed: 0
    data:   {source: mnist5k, ...}          # edgecnn.data.DataConfig
    model:  {source: bn_cnn, ...}           # edgecnn.models.ModelConfig
    stages:                                 # ordered; each a registered stage with its config
      - train: {epochs: 8}
      - prune: {target_macs_ratio: 2.0}
      - quantize: {mode: ptq}
    export: {formats: [onnx, openvino, tflite], precisions: [fp32, int8]}
    targets: [local-cpu, local-cpu-1t]
    bench: {...}                            # how targets are measured
    report: {formats: [json, md, html]}

Every error names the dotted key, the bad value and what is allowed.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from edgecnn.config import check, from_dict, to_dict
from edgecnn.data import DataConfig
from edgecnn.errors import EdgecnnError, RecipeError, did_you_mean
from edgecnn.models import ModelConfig

# Stages that always close a run, in this order, after the recipe's own stages.
TAIL = ("export", "verify")


@dataclass
class ReportConfig:
    formats: list[Literal["json", "md", "html"]] = field(default_factory=lambda: ["json", "md", "html"])
    agreement_threshold: float = 99.0    # flag artifact pairs agreeing on fewer top-1 % than this


@dataclass
class Recipe:
    name: str = "quickstart"                 # run directory name under runs/
    seed: int = 0                            # splits, init, shuffling: one seed for the whole run
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: list[Any] = field(default_factory=lambda: [{"train": {}}])
    export: dict[str, Any] = field(default_factory=dict)     # edgecnn.export.ExportConfig
    targets: list[str] = field(default_factory=lambda: ["local-cpu"])
    bench: dict[str, Any] = field(default_factory=dict)      # edgecnn.bench.BenchConfig
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self):
        check(bool(self.name) and "/" not in self.name and not self.name.startswith("."), "name",
              f"'{self.name}' cannot name a run directory (no '/', not starting with '.')")
        self._stages = parse_stages(self.stages)
        self._tail = parse_tail(self)

    def stage_list(self) -> list[tuple[str, str, Any]]:
        """(name, kind, config) for the recipe's stages, then export and verify."""
        return [*self._stages, *self._tail]

    def model_without_checkpoint(self) -> ModelConfig:
        return dataclasses.replace(self.model, checkpoint=None)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}
        d["stages"] = [{name: to_dict(cfg)} for name, _, cfg in self._stages]
        for name, _, cfg in self._tail:
            d[{"verify": "bench"}.get(name, name)] = to_dict(cfg)
        return d

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def parse_stages(entries: list[Any]) -> list[tuple[str, str, Any]]:
    """`[{train: {...}}, 'prune', ...]` -> [(name, kind, config)], validated against the registry."""
    from edgecnn.stages import STAGES

    out, seen = [], set()
    for i, entry in enumerate(entries):
        key = f"stages[{i}]"
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            raise RecipeError(key, f"each stage is one 'name: {{settings}}' mapping, got {entry!r}")
        (kind, settings), = entry.items()
        allowed = [n for n in STAGES.names() if n not in TAIL]
        if kind in TAIL:
            raise RecipeError(key, f"'{kind}' always runs at the end; configure it under the recipe's "
                                   f"top-level '{ {'verify': 'bench'}.get(kind, kind) }' key instead.")
        if kind not in allowed:
            raise RecipeError(key, f"unknown stage '{kind}'.{did_you_mean(kind, allowed)} "
                                   f"Allowed: {', '.join(allowed)}.")
        spec = STAGES.get(kind)
        cfg = from_dict(spec.config_cls, settings or {}, f"{key}.{kind}")
        name = kind if kind not in seen else f"{kind}_{sum(1 for n, k, _ in out if k == kind) + 1}"
        seen.add(kind)
        out.append((name, kind, cfg))
    if not out or out[0][1] != "train":
        raise RecipeError("stages", "the first stage must be 'train' (use 'train: {epochs: 0}' with "
                                    "model.checkpoint to start from trained weights)")
    return out


def parse_tail(recipe: Recipe) -> list[tuple[str, str, Any]]:
    from edgecnn.stages import STAGES

    export_cfg = from_dict(STAGES.get("export").config_cls, recipe.export, "export")
    bench = dict(recipe.bench)
    if "targets" in bench:
        raise RecipeError("bench.targets", "list targets under the top-level 'targets' key")
    bench["targets"] = list(recipe.targets)
    verify_cfg = from_dict(STAGES.get("verify").config_cls, bench, "bench")
    if "int8" in getattr(export_cfg, "precisions", []) and not any(k == "quantize" for _, k, _ in recipe._stages):
        raise RecipeError("export.precisions", "int8 artifacts come from a quantize stage, and the recipe "
                                               "has none. Add '- quantize: {}' to stages, or drop int8.")
    return [("export", "export", export_cfg), ("verify", "verify", verify_cfg)]


def default_recipe_text() -> str:
    return resources.files("edgecnn").joinpath("recipes/default.yaml").read_text()


def load_recipe(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and validate a recipe file (the built-in default when `path` is None)."""
    if path is None:
        text, where = default_recipe_text(), "the built-in default recipe"
    else:
        p = Path(path)
        if not p.is_file():
            raise EdgecnnError(f"recipe '{p}' does not exist. Write one with 'edgecnn init {p}'.")
        text, where = p.read_text(), str(p)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError("", f"{where}: not valid YAML{at}: {getattr(e, 'problem', e)}. "
                              "Check the indentation and the ':' after each key.") from None
    if not isinstance(data, dict):
        raise RecipeError("", f"{where}: a recipe is a mapping of keys (name, data, model, stages, ...), "
                              f"got {type(data).__name__}")
    data = _merge(data, overrides or {})
    try:
        return from_dict(Recipe, data)
    except RecipeError as e:
        err = RecipeError("", f"{where}: {e}")
        err.key = e.key
        raise err from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out
