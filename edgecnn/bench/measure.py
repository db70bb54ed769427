"""Measure one loaded session: accuracy, agreement with reference logits, latency, memory, size.

`measure(session, x, labels, reference, config)` works on anything with `.run(x) -> logits`
(an `edgecnn.runtimes` Session, a torch module wrapper, a test fake). The arithmetic lives in
`edgecnn.bench.agent`, the script that also runs on remote devices, so local and remote rows are
computed by the same code.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from edgecnn.bench import agent
from edgecnn.config import check

__all__ = ["MeasureConfig", "Measurement", "measure", "from_agent_result", "files_size", "environment"]


class Runnable(Protocol):
    def run(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class MeasureConfig:
    runs: int = 200                    # timed batch-1 calls after warm-up (0: until time_budget_s)
    warmup: int = 20                   # untimed batch-1 calls first (caches, lazy init, JIT)
    time_budget_s: float | None = None  # stop timing earlier once this many seconds are spent
    min_runs: int = 20                 # timed calls made even when the budget is spent sooner
    eval_batch: int = 64               # batch for the accuracy pass; 1 when the artifact has a static batch
    throughput_batch: int = 32         # batch for images/s; 1 or 0: derive from batch-1 latency
    throughput_seconds: float = 2.0    # seconds of back-to-back calls for the throughput figure
    limit: int | None = None           # test images for accuracy and agreement; null: the whole test split

    def __post_init__(self):
        check(self.runs >= 0, "runs", f"{self.runs} must be >= 0")
        check(self.runs > 0 or bool(self.time_budget_s), "runs",
              "0 needs a time_budget_s (give one, or runs > 0)")
        check(self.warmup >= 0, "warmup", f"{self.warmup} must be >= 0")
        check(self.time_budget_s is None or self.time_budget_s > 0, "time_budget_s", "must be > 0 seconds")
        check(self.min_runs >= 1, "min_runs", "must be >= 1")
        check(self.eval_batch >= 1, "eval_batch", "must be >= 1")
        check(self.throughput_batch >= 0, "throughput_batch", "must be >= 0")
        check(self.throughput_seconds > 0, "throughput_seconds", "must be > 0 seconds")
        check(self.limit is None or self.limit >= 1, "limit", "must be >= 1 image")

    def agent_config(self) -> dict[str, Any]:
        """The subset the measurement core reads (sent to remote agents as JSON)."""
        return {k: getattr(self, k) for k in agent.DEFAULTS}


@dataclass
class Measurement:
    """One row of the benchmark table: one artifact, one runtime, one target."""
    name: str                              # artifact (file name) or 'torch-fp32' for the reference row
    target: str                            # target profile name
    runtime: str                           # torch | onnxruntime | openvino | litert
    format: str = ""                       # onnx | openvino | tflite | torch
    precision: str = ""                    # fp32 | int8 | ...
    status: Literal["ok", "failed", "skipped"] = "ok"
    error: str | None = None               # why it failed or was skipped
    n_images: int = 0                      # test images behind top1/top5/agreement
    top1: float | None = None              # percent
    top5: float | None = None              # percent
    agreement_top1: float | None = None    # percent of images whose top-1 equals the reference's
    max_abs_diff: float | None = None      # max |logit - reference logit|
    mean_abs_diff: float | None = None     # mean |logit - reference logit|
    latency_ms: dict[str, float] = field(default_factory=dict)   # batch 1: p50 p90 p99 mean std min max runs
    throughput_ips: float | None = None    # images per second at throughput_batch
    throughput_batch: int | None = None
    eval_batch: int | None = None          # batch the accuracy pass ran at
    load_s: float | None = None            # seconds to load and compile the artifact
    peak_rss_mb: float | None = None       # peak resident memory of the measuring process, MiB
    rss_added_mb: float | None = None      # of which added by loading and running this artifact, MiB
    size_bytes: int | None = None          # artifact files on disk (weights included)
    threads: int | None = None             # intra-op threads given to the runtime
    remote: bool = False                   # measured on another machine through the agent
    env: dict[str, Any] = field(default_factory=dict)   # CPU, flags, runtime versions, host
    logits: str | None = None              # saved logits (.npy, path relative to the run directory)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def size_mb(self) -> float | None:
        return None if self.size_bytes is None else round(self.size_bytes / 1e6, 3)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size_mb"] = self.size_mb
        d["artifact"] = self.name   # the key the report matches artifacts on
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Measurement":
        d = {k: v for k, v in d.items() if k not in ("size_mb", "artifact")}
        return cls(**d)


def files_size(files: Iterable[str | Path]) -> int:
    return sum(Path(f).stat().st_size for f in files if Path(f).is_file())


def environment(runtimes: Iterable[str] | None = None, threads: int | None = None) -> dict[str, Any]:
    """CPU model and flags, Python, NumPy and runtime versions of this machine."""
    return agent.environment(list(runtimes) if runtimes else None, threads)


def from_agent_result(measured: dict[str, Any], row: Measurement) -> Measurement:
    """Fill `row` from the measurement core's dict (local or from a remote agent's JSON)."""
    acc = measured.get("accuracy") or {}
    agr = measured.get("agreement") or {}
    tp = measured.get("throughput") or {}
    row.n_images = measured.get("n_images", 0)
    row.top1, row.top5 = acc.get("top1"), acc.get("top5")
    row.agreement_top1 = agr.get("top1_agreement")
    row.max_abs_diff, row.mean_abs_diff = agr.get("max_abs_diff"), agr.get("mean_abs_diff")
    row.latency_ms = measured.get("latency_ms", {})
    row.throughput_ips, row.throughput_batch = tp.get("images_per_s"), tp.get("batch")
    row.eval_batch = measured.get("eval_batch")
    return row


def measure(session: Runnable, x: np.ndarray, labels: np.ndarray | None = None,
            reference: np.ndarray | None = None, config: MeasureConfig | None = None, *,
            name: str = "model", target: str = "local", runtime: str = "", format: str = "",
            precision: str = "", files: Iterable[str | Path] = (), load_s: float | None = None,
            threads: int | None = None, rss_before_mb: float | None = None,
            clock=time.perf_counter) -> tuple[Measurement, np.ndarray]:
    """Measure `session` on float32 NCHW `x`; returns the row and the logits it produced.

    `reference`: logits of the reference model on the same `x`, for agreement. `rss_before_mb`:
    resident memory before the session was loaded (see `agent.reset_peak_rss`), for rss_added_mb.
    """
    config = config or MeasureConfig()
    if config.limit is not None:
        x = x[:config.limit]
        labels = None if labels is None else labels[:config.limit]
        reference = None if reference is None else reference[:config.limit]
    labels = None if labels is None else np.asarray(labels)
    # edgecnn.runtimes sessions run any batch, in chunks of `batch_size` when the model has a fixed one
    measured, logits = agent.measure_session(session.run, x, labels, reference, config.agent_config(), clock,
                                             fixed_batch=getattr(session, "batch_size", None))
    peak = agent.peak_rss_mb()
    row = Measurement(name=name, target=target, runtime=runtime, format=format, precision=precision,
                      load_s=None if load_s is None else round(load_s, 4), peak_rss_mb=peak,
                      rss_added_mb=None if rss_before_mb is None else round(peak - rss_before_mb, 1),
                      size_bytes=files_size(files) if files else None, threads=threads,
                      env=environment([runtime] if runtime else None, threads))
    return from_agent_result(measured, row), logits


def default_threads() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity), else the CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
