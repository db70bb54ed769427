"""Reports: report.json (versioned schema, see docs/report-schema.md), report.md, report.html.

Every number comes from the run's manifest, which holds what the stages measured.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from edgecnn.io import write_json, write_text

REPORT_SCHEMA = "edgecnn.report/1"


def environment() -> dict[str, Any]:
    import torch

    env = {"python": platform.python_version(), "platform": platform.platform(),
           "machine": platform.machine(), "torch": torch.__version__, "cpu_count": _cpu_count()}
    try:
        from edgecnn.bench.env import environment as bench_env
        env.update(bench_env())
    except ImportError:
        pass
    return env


def _cpu_count() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def build_report(manifest: dict[str, Any]) -> dict[str, Any]:
    stages, artifacts = [], []
    for name, entry in manifest.get("stages", {}).items():
        m = entry.get("metrics", {})
        stages.append({"name": name, "kind": entry.get("kind"), "seconds": entry.get("seconds"),
                       "config": entry.get("config"), "metrics": {k: v for k, v in m.items()
                                                                  if k not in ("artifacts", "measurements")}})
        if entry.get("kind") == "export":
            artifacts = list(m.get("artifacts", []))
    verify = manifest.get("stages", {}).get("verify", {}).get("metrics", {})
    measurements = verify.get("measurements", [])
    for a in artifacts:
        a["measurements"] = [x for x in measurements if x.get("artifact") == a.get("name")]
    return {"schema": REPORT_SCHEMA, "recipe": manifest.get("recipe"), "recipe_hash": manifest.get("recipe_hash"),
            "edgecnn_version": manifest.get("edgecnn_version"), "finished": manifest.get("finished"),
            "environment": environment(), "data": manifest.get("data"), "stages": stages,
            "artifacts": artifacts, "reference": [x for x in measurements if x.get("runtime") == "torch"],
            "consistency": verify.get("consistency")}


def write_reports(run_dir: Path, manifest: dict[str, Any], cfg) -> dict[str, Path]:
    from edgecnn.report.markdown import render_markdown

    report = build_report(manifest)
    paths = {"json": write_json(run_dir / "report.json", report)}
    if "md" in cfg.formats:
        paths["md"] = write_text(run_dir / "report.md", render_markdown(report))
    if "html" in cfg.formats:
        try:
            from edgecnn.report.html import render_html
        except ImportError:
            pass
        else:
            paths["html"] = write_text(run_dir / "report.html", render_html(report, run_dir))
    return paths
