"""Artifact x target -> Measurement, and the pipeline's verify stage.

`measure_artifact(artifact, target, data)` loads the artifact in its runtime on the target (this
CPU, optionally pinned; the GPU; or a remote device through `remote`) and measures it.
`measure_module(model, target, data)` does the same for a PyTorch module (the fp32 eager reference
row). `verify_stage` measures every exported artifact on every target of the recipe; a target that
cannot be used or an artifact that fails is recorded as a failed (or skipped) row and the stage
goes on with the rest.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn import progress
from edgecnn.bench import agent
from edgecnn.bench.measure import MeasureConfig, Measurement, measure
from edgecnn.bench.targets import RuntimeMissing, Target, TargetError, TargetUnavailable, load_target
from edgecnn.config import check
from edgecnn.errors import EdgecnnError, RecipeError

__all__ = ["BenchConfig", "measure_artifact", "measure_module", "reference_logits", "verify_stage", "pick_runtime",
           "pinned", "failed_row"]

# A format's own runtime first; the agent on a remote device has adapters for these only.
_FORMAT_RUNTIMES = {"onnx": ("onnxruntime", "openvino"), "openvino": ("openvino",), "tflite": ("litert",),
                    "torch": ("torch",)}
REFERENCE_NAME = "torch-fp32"
REFERENCE_INT8 = "torch-int8"   # the PT2E fake-quant graph: what int8 artifacts must agree with


@dataclass
class BenchConfig(MeasureConfig):
    """The recipe's `bench:` section (targets come from the recipe's top-level `targets:`)."""
    targets: list[str] = field(default_factory=lambda: ["local-cpu"])   # target profile names or YAML paths
    reference: bool = True          # add a PyTorch fp32 eager row (runtime 'torch') on each local/cuda target
    save_logits: bool = True        # keep each row's test logits in verify/logits/ (for the consistency report)

    def __post_init__(self):
        super().__post_init__()
        check(bool(self.targets), "targets", "list at least one target (e.g. local-cpu)")
        for i, name in enumerate(self.targets):   # a typo fails the recipe, not an hour later
            try:
                load_target(name)
            except TargetError as e:
                raise RecipeError(f"targets[{i}]", str(e)) from None

    def measure_config(self) -> MeasureConfig:
        return MeasureConfig(**{k: getattr(self, k) for k in MeasureConfig.__dataclass_fields__})


# --------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def pinned(cpus: list[int] | None) -> Iterator[None]:
    """Run the block with this thread (and the runtime threads it starts) on `cpus`.

    Affinity is per thread on Linux and inherited by threads created later, so pinning must wrap
    the session's creation: thread pools the runtime already started are not moved.
    """
    if not cpus:
        yield
        return
    if not hasattr(os, "sched_setaffinity"):
        raise TargetError("", "CPU pinning (cpus:) needs Linux (os.sched_setaffinity); remove cpus from the target.")
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as e:
        raise TargetError("", f"cannot pin to CPUs {cpus} ({e}); this process may use {sorted(before)}. "
                              "Fix the target's cpus.") from None
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pick_runtime(fmt: str, target: Target) -> str:
    """The runtime that runs a `fmt` artifact on `target`: the format's own when the target has it."""
    candidates = _FORMAT_RUNTIMES.get(fmt)
    if candidates is None:
        raise EdgecnnError(f"unknown artifact format '{fmt}'. Known: {', '.join(sorted(_FORMAT_RUNTIMES))}.")
    for r in candidates:
        if r in target.runtimes and (not target.remote or r in agent.ADAPTERS):
            return r
    # skipped, not failed: the profile says the device has no runtime for this format
    raise RuntimeMissing(target.name, f"no runtime for {fmt} artifacts: it needs one of {', '.join(candidates)}, "
                                      f"the target lists {', '.join(target.runtimes)}.", status="skipped")


def _artifact(artifact: Any) -> Any:
    if isinstance(artifact, (str, Path)):
        from edgecnn.export import Artifact
        return Artifact.load(artifact)
    return artifact


def _inputs(data: Any, limit: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(float32 NCHW, int64 labels or None) from a DataBundle, an (x, labels) pair or an array."""
    if hasattr(data, "tensors"):
        x, y = data.tensors("test", limit)
        return x.numpy(), y.numpy()
    if isinstance(data, tuple):
        x, y = data
    else:
        x, y = data, None
    x = np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
    y = None if y is None else np.asarray(y.numpy() if hasattr(y, "numpy") else y)
    if limit is not None:
        x, y = x[:limit], None if y is None else y[:limit]
    return x, y


def _require_cuda(target: Target) -> None:
    from edgecnn.bench.targets import _require_cuda as require
    require(target)


@contextlib.contextmanager
def _torch_threads() -> Iterator[None]:
    """torch.set_num_threads is process-wide: give the caller its setting back."""
    import torch

    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _measure_local(source: Any, runtime: str, target: Target, x: np.ndarray, labels: np.ndarray | None,
                   reference: np.ndarray | None, config: MeasureConfig, *, name: str, fmt: str, precision: str,
                   files: list[Path]) -> tuple[Measurement, np.ndarray]:
    from edgecnn.runtimes import open_session

    device = "cuda" if target.kind == "cuda" else None
    if target.kind == "cuda":
        _require_cuda(target)
    threads = target.resolve_threads()
    with pinned(target.cpus), _torch_threads():
        agent.reset_peak_rss()
        rss_before = agent.current_rss_mb()
        t0 = time.perf_counter()
        session = open_session(source, runtime, threads=threads, device=device)
        load_s = getattr(session, "load_seconds", None) or time.perf_counter() - t0
        try:
            row, logits = measure(session, x, labels, reference, config, name=name, target=target.name,
                                  runtime=runtime, format=fmt, precision=precision, files=files, load_s=load_s,
                                  threads=threads, rss_before_mb=rss_before)
        finally:
            close = getattr(session, "close", None)
            if close:
                close()
    row.env["session"] = getattr(session, "info", {})
    if target.cpus:
        row.env["pinned_cpus"] = list(target.cpus)
    return row, logits


# --------------------------------------------------------------------------- public API

def _measure_artifact(artifact: Any, target: Target, x: np.ndarray, labels: np.ndarray | None,
                      reference: np.ndarray | None, config: MeasureConfig, runtime: str | None,
                      return_logits: bool) -> tuple[Measurement, np.ndarray | None]:
    art = _artifact(artifact)
    runtime = runtime or pick_runtime(art.format, target)
    if runtime not in target.runtimes:
        raise RuntimeMissing(target.name, f"runtime '{runtime}' is not in its runtimes ({', '.join(target.runtimes)}).")
    name = Path(art.path).name
    files = [Path(f) for f in (getattr(art, "files", None) or [art.path])]
    if target.remote:
        from edgecnn.bench.remote import measure_remote
        return measure_remote(art, target, runtime, x, labels, reference, config, name=name, format=art.format,
                              precision=art.precision, return_logits=return_logits)
    return _measure_local(art, runtime, target, x, labels, reference, config, name=name, fmt=art.format,
                          precision=art.precision, files=files)


def measure_artifact(artifact: Any, target: str | Path | Target, data: Any, reference_logits: np.ndarray | None = None,
                     config: MeasureConfig | None = None, *, runtime: str | None = None) -> Measurement:
    """Measure an exported artifact on a target.

    artifact: an `edgecnn.export.Artifact`, or the path of an artifact file or its .json sidecar.
    target: a profile name, a YAML path or a `Target`. data: a DataBundle (its test split), an
    (x, labels) pair, or inputs alone (no accuracy). reference_logits: the reference model's logits
    on the same inputs, for agreement. runtime: override the format's own runtime.
    Raises TargetUnavailable / RuntimeMissing / TargetError (all EdgecnnError) when it cannot.
    """
    config = config or MeasureConfig()
    t = load_target(target)
    x, labels = _inputs(data, config.limit)
    ref = None if reference_logits is None else np.asarray(reference_logits, np.float32)[:len(x)]
    return _measure_artifact(artifact, t, x, labels, ref, config, runtime, False)[0]


def measure_module(model: Any, target: str | Path | Target, data: Any, reference_logits: np.ndarray | None = None,
                   config: MeasureConfig | None = None, *, name: str = REFERENCE_NAME, precision: str = "fp32"
                   ) -> tuple[Measurement, np.ndarray]:
    """Measure a PyTorch module (eager; fp32, or a PT2E int8 graph) on a local or cuda target;
    returns the row and its logits."""
    config = config or MeasureConfig()
    t = load_target(target)
    if t.remote:
        raise TargetError(t.name, "a PyTorch module is measured on local or cuda targets only; export it to "
                                  "measure it on a device.")
    x, labels = _inputs(data, config.limit)
    ref = None if reference_logits is None else np.asarray(reference_logits, np.float32)[:len(x)]
    return _measure_local(model, "torch", t, x, labels, ref, config, name=name, fmt="torch", precision=precision,
                          files=[])


def reference_logits(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The float model's logits on `x` (CPU, eval mode): what every row's agreement is measured against."""
    import torch

    try:
        model = model.eval()
    except NotImplementedError:  # exported GraphModules are already in inference form
        pass
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))).float().cpu().numpy()
                               for i in range(0, len(x), batch)])


def failed_row(name: str, target: str, err: BaseException, *, runtime: str = "", fmt: str = "",
               precision: str = "") -> Measurement:
    """The row recorded when a measurement could not be made: 'skipped' when that is by design
    (no GPU on this machine, no runtime for the format in the profile), else 'failed'."""
    msg = str(err) if isinstance(err, EdgecnnError) else f"{type(err).__name__}: {err}"
    status = getattr(err, "status", "failed") if isinstance(err, TargetError) else "failed"
    return Measurement(name=name, target=target, runtime=runtime, format=fmt, precision=precision, status=status,
                       error=msg)


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)


def verify_stage(ctx: Any, cfg: BenchConfig):
    """The pipeline's verify stage: every artifact (and the fp32 reference) on every target.

    Writes verify/measurements.json (and verify/logits/*.npy); metrics["measurements"] holds one
    Measurement.to_dict() per row, failed and skipped rows included with their error.
    """
    from edgecnn.io import write_json
    from edgecnn.pipeline import StageResult

    mcfg = cfg.measure_config()
    x, labels = _inputs(ctx.data, cfg.limit)
    # Each artifact is held against the graph it was exported from: fp32/fp16 against the final
    # float model, int8 against the PT2E fake-quant graph. Accuracy lost to pruning or quantization
    # shows in the stage rows, not as runtime disagreement.
    model = ctx.model
    quantized = ctx.quantized()
    refs = {"fp32": reference_logits(model, x)}
    if quantized is not None:
        refs["int8"] = reference_logits(quantized, x)
    ref = refs["fp32"]
    artifacts = ctx.artifacts()
    logits_dir = Path(ctx.stage_dir) / "logits"
    rows: list[Measurement] = []
    targets: dict[str, dict[str, Any]] = {}

    def keep(row: Measurement, logits: np.ndarray | None) -> None:
        if logits is not None and cfg.save_logits:
            from edgecnn.io import atomic_path
            path = logits_dir / f"{_safe(row.name)}@{_safe(row.target)}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, suffix=".npy") as tmp:
                np.save(tmp, logits)
            row.logits = str(path.resolve().relative_to(Path(ctx.run_dir).resolve()))
        rows.append(row)
        state = "[green]ok[/]" if row.ok else f"[yellow]{row.status}[/]"
        p50 = row.latency_ms.get("p50")
        progress.log(f"    {row.name} @ {row.target}: {state}"
                     + (f" top-1 {row.top1}%  p50 {p50:.3f} ms" if row.ok and p50 is not None else f" {row.error}"))

    jobs = [(tname, a) for tname in cfg.targets
            for a in [None, *([REFERENCE_INT8] if quantized is not None else []), *artifacts]]
    unavailable: dict[str, TargetError] = {}
    loaded: dict[str, Target | TargetError] = {}
    for tname, art in progress.progress(jobs, len(jobs), "verify"):
        if tname not in loaded:
            try:
                loaded[tname] = load_target(tname)
                targets[loaded[tname].name] = {"status": "ok", "error": None}
            except TargetError as e:
                loaded[tname] = e
                targets[tname] = {"status": "failed", "error": str(e)}
        t = loaded[tname]
        if art is REFERENCE_INT8:
            label, fmt, precision, module, row_ref = REFERENCE_INT8, "torch", "int8", quantized, refs["int8"]
            art = None
        elif art is None:
            label, fmt, precision, module, row_ref = REFERENCE_NAME, "torch", "fp32", model, ref
        else:
            label, fmt, precision, module = Path(art.path).name, art.format, art.precision, None
            row_ref = refs.get("int8", ref) if art.precision == "int8" else ref
        if isinstance(t, TargetError):
            keep(failed_row(label, tname, t, fmt=fmt, precision=precision), None)
            continue
        if art is None and (not cfg.reference or t.remote or "torch" not in t.runtimes):
            continue
        try:
            runtime = "torch" if art is None else pick_runtime(art.format, t)
        except RuntimeMissing as e:   # the profile has no runtime for this format: skipped by design
            keep(failed_row(label, t.name, e, fmt=fmt, precision=precision), None)
            continue
        if tname in unavailable:  # one unreachable device: no point retrying it per artifact
            keep(failed_row(label, t.name, unavailable[tname], runtime=runtime, fmt=fmt, precision=precision), None)
            continue
        progress.status(f"{label} @ {t.name}")
        try:
            if art is None:
                row, logits = measure_module(module, t, (x, labels), row_ref, mcfg, name=label,
                                             precision=precision)
            else:
                row, logits = _measure_artifact(art, t, x, labels, row_ref, mcfg, runtime, cfg.save_logits)
        except TargetUnavailable as e:
            unavailable[tname] = e
            targets[t.name] = {"status": e.status, "error": str(e)}
            keep(failed_row(label, t.name, e, runtime=runtime, fmt=fmt, precision=precision), None)
        except Exception as e:  # noqa: BLE001 - one artifact's failure must not lose the other rows
            keep(failed_row(label, t.name, e, runtime=runtime, fmt=fmt, precision=precision), None)
        else:
            keep(row, logits)

    data = [r.to_dict() for r in rows]
    for d, r in zip(data, rows):
        t = loaded.get(r.target)
        if isinstance(t, Target) and r.ok:
            d["budgets"] = t.budgets.check(d)
    out = write_json(Path(ctx.stage_dir) / "measurements.json", data)
    ok = [r for r in rows if r.ok]
    metrics: dict[str, Any] = {"measurements": data, "targets": targets,
                               "counts": {s: sum(r.status == s for r in rows) for s in ("ok", "failed", "skipped")}}
    if labels is not None:   # the classes of the measured images, for per-class figures in the report
        from edgecnn.io import atomic_path
        lp = Path(ctx.stage_dir) / "labels.npy"
        with atomic_path(lp, suffix=".npy") as tmp:
            np.save(tmp, np.asarray(labels, np.int64))
        metrics["labels"] = str(lp.resolve().relative_to(Path(ctx.run_dir).resolve()))
        splits = getattr(ctx.data, "splits", None)
        if splits and "test" in splits:   # positions in the source, so a flagged image can be found
            metrics["indices"] = [int(i) for i in splits["test"].indices[:len(labels)]]
    ref_row = next((r for r in ok if r.runtime == "torch"), None)
    if ref_row is not None:
        metrics["test"] = {"top1": ref_row.top1, "top5": ref_row.top5, "n": ref_row.n_images}
    files = {"measurements": out}
    if "labels" in metrics:
        files["labels"] = Path(ctx.run_dir) / metrics["labels"]
    return StageResult(metrics=metrics, files=files)
