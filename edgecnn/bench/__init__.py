"""Benchmarks: measure artifacts on targets (this CPU, a GPU, remote devices over SSH).

    from edgecnn.bench import measure_artifact, load_target, MeasureConfig
    row = measure_artifact("runs/x/export/model_int8.json", "local-cpu", data)   # -> Measurement

Modules: `measure` (one session -> Measurement), `targets` (profiles in targets/*.yaml),
`remote` (ssh/scp transport), `agent` (the self-contained script run on devices), `runner`
(artifact x target dispatch and the pipeline's verify stage). Names below load lazily so that
`import edgecnn.bench` stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MeasureConfig": "measure", "Measurement": "measure", "measure": "measure",
    "Target": "targets", "TargetError": "targets", "TargetUnavailable": "targets", "RuntimeMissing": "targets",
    "load_target": "targets", "list_targets": "targets", "check_target": "targets",
    "measure_artifact": "runner", "measure_module": "runner", "verify_stage": "runner", "VerifyConfig": "runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"edgecnn.bench.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'edgecnn.bench' has no attribute '{name}'")
