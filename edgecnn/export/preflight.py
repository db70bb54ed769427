"""Pre-flight: can each format and its runtime take this model? Answered in seconds, before training.

`check_model` converts a copy of the model at batch 1 (float, fp32) to every format in a scratch
folder, loads each file in the format's runtime and runs one input. Nothing is verified against
tolerances here and nothing is kept: the report lists, per format, whether it worked, the
operator that stopped it, where in the model that operator is, and how long the check took.
"""
from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.errors import EdgecnnError


@dataclass
class FormatCheck:
    format: str
    runtime: str
    ok: bool
    stage: str = "done"                       # convert | load | run | done
    operators: list[str] = field(default_factory=list)    # aten operators the format/runtime could not take
    locations: list[str] = field(default_factory=list)    # module paths that use them
    error: str | None = None
    max_abs_diff: float | None = None         # vs PyTorch on the one input (informational)
    seconds: float = 0.0


@dataclass
class CheckReport:
    input_shape: tuple[int, ...]
    checks: list[FormatCheck]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def accepted(self) -> list[str]:
        return [c.format for c in self.checks if c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "ok": self.ok, "accepted": self.accepted(),
                "checks": [asdict(c) for c in self.checks]}

    def summary(self) -> str:
        lines = []
        for c in self.checks:
            if c.ok:
                lines.append(f"{c.format:9s} ok      ({c.runtime}, {c.seconds:.1f} s, max |diff| {c.max_abs_diff:.2g})")
            else:
                ops = ", ".join(c.operators) or "?"
                where = f" in {', '.join(c.locations)}" if c.locations else ""
                lines.append(f"{c.format:9s} FAILED at {c.stage}: operator {ops}{where} ({c.error})")
        return "\n".join(lines)


def check_model(model: Any, input_shape: tuple[int, ...], formats: list[str] | None = None) -> CheckReport:
    """Convert and load a batch-1 copy of `model` (input (C, H, W) or (1, C, H, W)) in each format."""
    import torch

    from edgecnn.export.base import EXPORTERS, Job, module_of_op, operator_in, run_torch
    from edgecnn.export.config import ExportConfig
    from edgecnn.runtimes import open_session
    from edgecnn.export.verify import runtime_options, _Staged

    formats = list(formats or EXPORTERS.names())
    for f in formats:
        EXPORTERS.get(f, key="formats")
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4:
        raise EdgecnnError(f"check_model: input_shape {input_shape} must be (C, H, W) or (1, C, H, W).")
    probe = copy.deepcopy(model).cpu().eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ref = run_torch(probe, x.numpy())
    cfg = ExportConfig(formats=formats, precisions=["fp32"])
    checks = []
    cache: dict = {}    # ONNX and OpenVINO convert from one torch.onnx.export of the probe
    for fmt in formats:
        spec = EXPORTERS.get(fmt)
        t0 = time.perf_counter()
        check = FormatCheck(fmt, spec.runtime, False, stage="convert")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                written = spec.write(Job(probe, x, "fp32", cfg, Path(tmp), "probe",
                                         {"format": fmt, "input": {"layout": "NCHW"}}, cache))
                check.stage = "load"
                contract = {"format": fmt, **written.contract}
                session = open_session(_Staged(written.main, fmt, contract), **runtime_options(fmt, "fp32"))
                check.stage = "run"
                with session:
                    out = session.run(x.numpy())
                check.max_abs_diff = float(np.abs(out - ref).max())
                check.ok, check.stage = True, "done"
            except Exception as e:   # noqa: BLE001  (every converter and runtime raises its own types)
                text = f"{type(e).__name__}: {e}"
                op = operator_in(text)
                if op:
                    check.operators = [op]
                    check.locations = module_of_op(probe, x, op)
                check.error = text.strip().splitlines()[0][:300]
        check.seconds = round(time.perf_counter() - t0, 2)
        checks.append(check)
    return CheckReport(shape, checks)
