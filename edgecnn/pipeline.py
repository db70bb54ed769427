"""The pipeline: a flat list of named stages run in a run directory that can be resumed.

    runs/<name>/
      manifest.json        each stage's fingerprint, inputs and outputs (sha256), metrics, time
      <stage>/             what the stage wrote (checkpoint, plots, artifacts)
      report.json, report.md

A stage's fingerprint hashes its own config with the fingerprint of the stage before it (the
first hashes the data and model source). On a rerun a stage whose fingerprint is unchanged and
whose outputs are still on disk with the recorded sha256 is skipped; a run killed mid-stage
resumes at that stage. One process at a time holds a run directory (an flock on `.lock`).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecnn import progress
from edgecnn.config import to_dict
from edgecnn.data import DataBundle, load_data
from edgecnn.errors import EdgecnnError, RunLockedError
from edgecnn.io import sha256_file, write_json
from edgecnn.registry import Registry

MANIFEST_SCHEMA = "edgecnn.manifest/1"


@dataclass
class StageResult:
    """What a stage hands back. The pipeline saves `model`, hashes `files`, records `metrics`."""
    model: nn.Module | None = None              # the new current float model (None: unchanged)
    quantized: Path | None = None               # a saved quantized program (compress.quantize.save_quantized)
    artifacts: list[Any] = field(default_factory=list)   # export.Artifact objects
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # other outputs worth hashing (plots, tables)


@dataclass
class StageSpec:
    config_cls: type
    run: Callable[["StageContext", Any], StageResult]
    trains: bool = False   # shown in `--help` and the report


STAGES: Registry[StageSpec] = Registry("stage")


def stage(name: str, config_cls: type, trains: bool = False):
    """Register a stage function: `@stage("prune", PruneConfig)` on `fn(ctx, cfg) -> StageResult`."""
    def add(fn):
        STAGES.register(name)(StageSpec(config_cls, fn, trains))
        return fn
    return add


@dataclass
class StageContext:
    """What a stage may read. Models load lazily from the previous stages' checkpoints."""
    name: str
    run_dir: Path
    stage_dir: Path
    data: DataBundle
    recipe: Any                     # edgecnn.recipe.Recipe
    recipe_hash: str
    seed: int
    state: dict[str, Any]           # paths: model, reference, quantized, artifacts (relative to run_dir)
    _cache: dict[str, Any] = field(default_factory=dict)

    def path(self, rel: str | None) -> Path | None:
        return None if rel is None else self.run_dir / rel

    @property
    def model(self) -> nn.Module:
        """The current float model (a fresh copy each stage: stages may change it freely)."""
        if "model" not in self._cache:
            self._cache["model"] = self._load_float(self.state.get("model"))
        return self._cache["model"]

    def reference(self) -> nn.Module:
        """The trained model before any compression: teacher and accuracy reference."""
        if "reference" not in self._cache:
            self._cache["reference"] = self._load_float(self.state.get("reference"))
        return self._cache["reference"]

    def quantized(self) -> nn.Module | None:
        """The PT2E-converted int8 model of the last quantize stage, or None."""
        rel = self.state.get("quantized")
        if rel is None:
            return None
        if "quantized" not in self._cache:
            from edgecnn.compress.quantize import load_quantized
            self._cache["quantized"] = load_quantized(self.path(rel))
        return self._cache["quantized"]

    def artifacts(self) -> list[Any]:
        from edgecnn.export import Artifact
        return [Artifact.load(self.path(rel)) for rel in self.state.get("artifacts", [])]

    def _load_float(self, rel: str | None) -> nn.Module:
        from edgecnn.models import build_model, load_checkpoint, load_weights

        if rel is None:
            raise EdgecnnError(f"stage '{self.name}' needs a trained model, but no stage before it made one. "
                               "Put a 'train' stage first (with epochs: 0 and model.checkpoint to start "
                               "from existing weights).")
        model = build_model(self.recipe.model_without_checkpoint(), self.data.num_classes,
                            self.data.input_shape[0])
        load_weights(model, load_checkpoint(self.path(rel)), source=str(self.path(rel)))
        return model.eval()


# --------------------------------------------------------------------------- run directory

@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir/.lock` for the duration; a second process gets a clear error at once."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir / ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_path.read_text().strip() or "another process"
            raise RunLockedError(f"run directory '{run_dir}' is in use by {holder}. Wait for that run to "
                                 "finish, or give this one another --name.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {datetime.now().isoformat(timespec='seconds')}".encode())
        yield
    finally:
        os.close(fd)   # closing releases the flock


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def load_manifest(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "manifest.json"
    if p.is_file():
        try:
            m = json.loads(p.read_text())
            if m.get("schema") == MANIFEST_SCHEMA:
                return m
        except json.JSONDecodeError:
            pass  # written atomically, so only a hand edit breaks it: start over
    return {"schema": MANIFEST_SCHEMA, "stages": {}}


def _outputs_intact(run_dir: Path, entry: dict[str, Any]) -> bool:
    for out in entry.get("outputs", {}).values():
        p = run_dir / out["path"]
        if not p.is_file() or sha256_file(p) != out["sha256"]:
            return False
    return True


@dataclass
class RunResult:
    run_dir: Path
    manifest: dict[str, Any]
    ran: list[str]
    skipped: list[str]
    seconds: float


class Pipeline:
    """Runs a recipe's stages in order in `run_dir`, skipping those already done."""

    def __init__(self, recipe, run_dir: Path, force: bool = False):
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.force = force

    def stages(self) -> list[tuple[str, str, Any]]:
        """(name, kind, config) for every stage, the fixed tail included."""
        return self.recipe.stage_list()

    def run(self, until: str | None = None) -> RunResult:
        """Run every stage, or the stages up to and including `until`."""
        names = [n for n, _, _ in self.stages()]
        if until is not None and until not in names:
            raise EdgecnnError(f"the recipe has no '{until}' stage (its stages: {', '.join(names)}). "
                               f"Add one under 'stages:'.")
        t0 = time.perf_counter()
        with run_lock(self.run_dir):
            return self._run(t0, until)

    def _run(self, t0: float, until: str | None) -> RunResult:
        from edgecnn.models import save_checkpoint

        recipe = self.recipe
        for stale in self.run_dir.rglob(".*.tmp"):   # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        manifest = load_manifest(self.run_dir)
        recipe_hash = recipe.hash()
        manifest.update(recipe=recipe.to_dict(), recipe_hash=recipe_hash,
                        edgecnn_version=_version(), updated=_now())
        progress.log(f"[bold]run[/] {self.run_dir}  (recipe {recipe_hash[:12]})")
        data = load_data(recipe.data, recipe.seed)
        manifest["data"] = {"source": recipe.data.source, "fingerprint": data.fingerprint,
                            "splits": {k: len(v) for k, v in data.splits.items()},
                            "preprocess": data.preprocess.to_dict(), "classes": data.class_names}
        state: dict[str, Any] = {}
        fingerprint = _hash(data.fingerprint, to_dict(recipe.model), _checkpoint_hash(recipe.model.checkpoint))
        ran, skipped = [], []
        upstream: dict[str, Any] = {}   # the previous stage's outputs: this stage's inputs
        for name, kind, cfg in self.stages():
            spec = STAGES.get(kind)
            inputs = {k: v["sha256"] for k, v in upstream.items()}
            fingerprint = _hash(fingerprint, kind, to_dict(cfg), recipe.seed, inputs)
            entry = manifest["stages"].get(name)
            if (not self.force and entry and entry.get("status") == "done"
                    and entry.get("fingerprint") == fingerprint and _outputs_intact(self.run_dir, entry)):
                state = dict(entry["state"])
                upstream = entry["outputs"] or upstream
                skipped.append(name)
                progress.log(f"  [dim]skip[/] {name}: inputs unchanged since {entry.get('finished', '?')}")
                if name == until:
                    break
                continue
            stage_dir = self.run_dir / name
            stage_dir.mkdir(parents=True, exist_ok=True)
            ctx = StageContext(name, self.run_dir, stage_dir, data, recipe, recipe_hash, recipe.seed, dict(state))
            progress.log(f"  [bold cyan]{name}[/] ...")
            started = time.perf_counter()
            torch.manual_seed(recipe.seed)
            try:
                result = spec.run(ctx, cfg)
            except BaseException:
                if not any(stage_dir.iterdir()):   # leave nothing behind for a stage that made nothing
                    stage_dir.rmdir()
                raise
            seconds = time.perf_counter() - started
            outputs: dict[str, dict[str, str]] = {}
            if result.model is not None:
                _add_model_figures(result, data)
                ckpt = save_checkpoint(stage_dir / "model.pt", result.model.cpu(),
                                       {"stage": name, "model_source": recipe.model.source})
                state["model"] = _rel(self.run_dir, ckpt)
                if "reference" not in state:
                    state["reference"] = state["model"]
                outputs["model"] = _out(self.run_dir, ckpt)
            if result.quantized is not None:
                state["quantized"] = _rel(self.run_dir, result.quantized)
                outputs["quantized"] = _out(self.run_dir, result.quantized)
            if result.artifacts:
                state["artifacts"] = []
                for a in result.artifacts:
                    state["artifacts"].append(_rel(self.run_dir, a.sidecar))
                    for f in [*a.files, a.sidecar]:
                        outputs[_rel(self.run_dir, f)] = _out(self.run_dir, f)
            for key, f in result.files.items():
                outputs[key] = _out(self.run_dir, f)
            manifest["stages"][name] = {
                "kind": kind, "status": "done", "fingerprint": fingerprint, "config": to_dict(cfg),
                "seconds": round(seconds, 2), "finished": _now(), "inputs": inputs, "outputs": outputs,
                "metrics": result.metrics, "state": dict(state)}
            write_json(self.run_dir / "manifest.json", manifest)
            upstream = outputs or upstream
            ran.append(name)
            progress.log(f"  [green]done[/] {name} in {seconds:.1f} s {_headline(result.metrics)}")
            if name == until:
                break
        # Drop entries of stages that are no longer in the recipe, so the report reflects this run.
        names = {n for n, _, _ in self.stages()}
        manifest["stages"] = {k: v for k, v in manifest["stages"].items() if k in names}
        manifest["finished"] = _now()
        write_json(self.run_dir / "manifest.json", manifest)
        return RunResult(self.run_dir, manifest, ran, skipped, time.perf_counter() - t0)


def _add_model_figures(result: StageResult, data: DataBundle) -> None:
    """Every stage that makes a model gets the same figures in the report: test accuracy, MACs, params."""
    from edgecnn.models import count_macs, count_params
    from edgecnn.train import evaluate

    m = result.metrics
    if not isinstance(m.get("test"), dict):
        m["test"] = evaluate(result.model.eval(), data, "test")
    m.setdefault("macs", count_macs(result.model, data.input_shape))
    m.setdefault("params", count_params(result.model))


def _headline(metrics: dict[str, Any]) -> str:
    acc = metrics.get("test", {}).get("top1") if isinstance(metrics.get("test"), dict) else None
    return f"(test top-1 {acc:.2f}%)" if acc is not None else ""


def _rel(run_dir: Path, p: Path) -> str:
    return str(Path(p).resolve().relative_to(run_dir.resolve()))


def _out(run_dir: Path, p: Path) -> dict[str, str]:
    return {"path": _rel(run_dir, p), "sha256": sha256_file(p)}


def _checkpoint_hash(path: str | None) -> str | None:
    return sha256_file(path) if path and Path(path).is_file() else path


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    from edgecnn import __version__
    return __version__
