"""Reports: report.json (versioned schema, see docs/report-schema.md), report.md, report.html.

Every number comes from the run's manifest, which holds what the stages measured, and from the
per-image outputs the verify stage saved beside it (consistency, per-class figures).

    report = build_report(manifest, run_dir)      # the report.json dict
    write_reports(run_dir, manifest, cfg)         # report.json, report.md, report.html
    check_gates(report, baseline, GateConfig(...))  # edgecnn.report.gates
"""
from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgecnn.io import write_json, write_text

REPORT_SCHEMA = "edgecnn.report/1"
SCHEMA_VERSION = 1
# Stage metrics moved to their own report sections instead of being repeated under the stage.
_LIFTED = ("artifacts", "measurements", "consistency")


def environment() -> dict[str, Any]:
    """The machine that built the report (each measurement carries its own target's `env`)."""
    import torch

    env = {"python": platform.python_version(), "platform": platform.platform(),
           "machine": platform.machine(), "torch": torch.__version__, "cpu_count": _cpu_count()}
    try:
        from edgecnn.bench.measure import environment as bench_env
        env.update({k: v for k, v in bench_env().items() if k not in env})
    except Exception:  # noqa: BLE001 - the bench module is optional here and may be mid-change
        pass
    return env


def _cpu_count() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _stage_entry(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    m = entry.get("metrics") or {}
    test = m.get("test") if isinstance(m.get("test"), dict) else {}
    # Headline accuracy: a stage's own test evaluation, else what compress stages report after their
    # pass, with the split it was measured on (prune and distill evaluate on their `eval_split`).
    top1, split = test.get("top1"), "test"
    if top1 is None:
        split = None
        for k in ("top1_after", "int8_top1", "top1"):
            if isinstance(m.get(k), (int, float)):
                top1 = m[k]
                split = "test" if k == "int8_top1" else m.get("eval_split")
                break
    return {
        "name": name, "kind": entry.get("kind"), "seconds": entry.get("seconds"), "finished": entry.get("finished"),
        "config": entry.get("config"),
        "accuracy": {"top1": top1, "split": split if top1 is not None else None, "top5": test.get("top5"), "loss": test.get("loss"), "n": test.get("n")},
        "macs": m.get("macs", m.get("macs_after")), "params": m.get("params", m.get("params_after")),
        "metrics": {k: v for k, v in m.items() if k not in _LIFTED},
        "outputs": [{"key": k, **v} for k, v in (entry.get("outputs") or {}).items()
                    if not str(v.get("path", "")).endswith((".onnx", ".xml", ".bin", ".tflite", ".pt", ".pt2"))],
    }


def export_artifacts(entry: dict[str, Any], run_dir: Path | None = None) -> list[dict[str, Any]]:
    """The export stage's artifacts as dicts: its `artifacts` list when it records one; else its
    per-artifact metrics (`{format}_{precision}: {file, bytes, top1_agreement, ...}`), completed
    from the artifacts' sidecars (contract, sha256, verification) when the run directory is at hand."""
    m = entry.get("metrics") or {}
    if isinstance(m.get("artifacts"), list):
        return [a for a in m["artifacts"] if isinstance(a, dict)]
    sha = {Path(o["path"]).name: o.get("sha256") for o in (entry.get("outputs") or {}).values()
           if isinstance(o, dict) and o.get("path")}
    sidecars = {}
    for rel in (entry.get("state") or {}).get("artifacts") or []:
        p = Path(run_dir) / rel if run_dir is not None else None
        if p is not None and p.is_file():
            try:
                side = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            sidecars[side.get("file") or Path(rel).stem] = (side, str(Path(rel).parent / side.get("file", "")))
    out = []
    for key, v in m.items():
        if not (isinstance(v, dict) and v.get("file")):
            continue
        fmt, _, precision = key.rpartition("_")
        side, path = sidecars.get(v["file"], ({}, None))
        verification = dict(side.get("verification") or {})
        for k in ("top1_agreement", "max_abs_diff", "samples", "runtime"):
            if v.get(k) is not None:
                verification.setdefault(k, v[k])
        contract = {k: x for k, x in side.items() if k != "verification"}
        out.append({"name": v["file"], "format": side.get("format") or fmt, "precision": side.get("precision") or precision,
                    "path": path or v["file"], "size_bytes": v.get("bytes"),
                    "sha256": side.get("sha256") or sha.get(v["file"]), "contract": contract or None,
                    "verification": verification})
    return out


def _target_budgets(names: list[str], verify_metrics: dict[str, Any],
                    rows: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """{target: {budgets, kind, description, ...}}: the limits verify recorded (in `targets`, or per
    row as `budgets: {name: {limit, value, ok}}`), else read from the target profiles now."""
    recorded = verify_metrics.get("targets")
    out: dict[str, Any] = {}
    if isinstance(recorded, dict):
        out.update({k: dict(v) for k, v in recorded.items() if isinstance(v, dict)})
    elif isinstance(recorded, list):
        out.update({t["name"]: dict(t) for t in recorded if isinstance(t, dict) and t.get("name")})
    for r in rows:
        if isinstance(r.get("budgets"), dict) and r.get("target"):
            b = out.setdefault(r["target"], {}).setdefault("budgets", {})
            b.update({k: v["limit"] for k, v in r["budgets"].items() if isinstance(v, dict) and v.get("limit") is not None})
    for name in names:
        if name in out and "budgets" in out[name]:
            continue
        try:
            from edgecnn.bench.targets import load_target
            t = load_target(name)
        except Exception:  # noqa: BLE001 - a target that no longer loads still gets its rows reported
            out.setdefault(name, {"budgets": {}})
            continue
        budgets = t.budgets.__dict__ if hasattr(t.budgets, "__dict__") else dict(t.budgets or {})
        out[name] = {**out.get(name, {}), "kind": t.kind, "description": t.description,
                     "budgets": {k: v for k, v in budgets.items() if v is not None}}
    return out


def build_report(manifest: dict[str, Any], run_dir: Path | None = None, cfg: Any = None) -> dict[str, Any]:
    """The report dict (schema `edgecnn.report/1`). With `run_dir`, the per-image outputs saved
    there add cross-runtime consistency and per-class figures; without, those sections are None."""
    from edgecnn.report.rows import mark_pareto, normalize_artifact, normalize_measurement

    stages_in = manifest.get("stages") or {}
    stages = [_stage_entry(name, entry) for name, entry in stages_in.items()]
    artifacts_in: list[dict[str, Any]] = []
    verify: dict[str, Any] = {}
    for entry in stages_in.values():
        m = entry.get("metrics") or {}
        if entry.get("kind") == "export" or "artifacts" in m:
            artifacts_in = export_artifacts(entry, run_dir) or artifacts_in
        if entry.get("kind") == "verify" or "measurements" in m:
            verify = m
    raw_rows = [x for x in verify.get("measurements") or [] if isinstance(x, dict)]
    measurements = [normalize_measurement(x) for x in raw_rows]
    artifacts = [normalize_artifact(a, measurements) for a in artifacts_in if isinstance(a, dict)]
    attached = {id(m) for a in artifacts for m in a["measurements"]}
    reference = [m for m in measurements if id(m) not in attached]
    pareto = mark_pareto([m for a in artifacts for m in a["measurements"]])
    targets = sorted({m["target"] for m in measurements})
    notes = []
    if not artifacts_in:
        notes.append("no export stage metrics: the run made no artifacts (yet)")
    elif not measurements:
        notes.append("no verify stage measurements: artifacts were not measured on any target")
    recipe = manifest.get("recipe") or {}
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA, "schema_version": SCHEMA_VERSION,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": {"name": recipe.get("name"), "dir": str(run_dir) if run_dir else None,
                "finished": manifest.get("finished"), "edgecnn_version": manifest.get("edgecnn_version")},
        "recipe": recipe, "recipe_hash": manifest.get("recipe_hash"),
        "environment": environment(), "data": manifest.get("data"),
        "stages": stages, "artifacts": artifacts, "reference": reference,
        "targets": _target_budgets(targets, verify, raw_rows), "pareto": pareto,
        "predictions": {"labels": verify.get("labels"), "indices": verify.get("indices")},
        "consistency": None, "per_class": None, "notes": notes,
    }
    if run_dir is not None:
        from edgecnn.report.classes import run_per_class
        from edgecnn.report.consistency import run_consistency

        threshold = getattr(cfg, "agreement_threshold", None) or (recipe.get("report") or {}).get(
            "agreement_threshold", 99.0)
        _attach_sensitivity(stages, Path(run_dir))
        report["consistency"] = run_consistency(report, Path(run_dir), threshold)
        report["per_class"] = run_per_class(report, Path(run_dir))
        notes += report["consistency"]["notes"] + report["per_class"]["notes"]
    return report


def _attach_sensitivity(stages: list[dict[str, Any]], run_dir: Path) -> None:
    """Copy a prune stage's sensitivity scan into its entry (from its metrics, or a JSON output
    that holds a 'sensitivity' key), so report.json alone can redraw the curves."""
    for s in stages:
        sens = s["metrics"].get("sensitivity")
        for out in s["outputs"]:
            p = run_dir / str(out.get("path", ""))
            if sens is None and p.suffix == ".json" and p.is_file() and p.stat().st_size < 20_000_000:
                try:
                    data = json.loads(p.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                if isinstance(data, dict) and data.get("sensitivity") is not None:
                    sens = data["sensitivity"]
        if sens is not None:
            s["sensitivity"] = sens


def load_report(path: str | Path) -> dict[str, Any]:
    """A report.json, or a run's manifest.json / run directory (its report is built on the fly)."""
    from edgecnn.errors import EdgecnnError

    p = Path(path)
    if p.is_dir():
        p = p / "report.json" if (p / "report.json").is_file() else p / "manifest.json"
    if not p.is_file():
        raise EdgecnnError(f"'{path}': no such report. Give a report.json, a manifest.json or a run directory.")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise EdgecnnError(f"'{p}' is not valid JSON ({e}).") from None
    schema = str(data.get("schema", ""))
    if schema.startswith("edgecnn.manifest/"):
        return build_report(data, p.parent)
    if not schema.startswith("edgecnn.report/"):
        raise EdgecnnError(f"'{p}' has schema '{schema or 'none'}', not an edgecnn report "
                           f"({REPORT_SCHEMA}) or run manifest.")
    if data.get("schema_version", 1) > SCHEMA_VERSION:
        raise EdgecnnError(f"'{p}' uses report schema version {data['schema_version']}, newer than this "
                           f"edgecnn reads ({SCHEMA_VERSION}). Upgrade edgecnn or regenerate the file.")
    return data


def write_reports(run_dir: Path, manifest: dict[str, Any], cfg) -> dict[str, Path]:
    """Write report.json and the formats `cfg.formats` names ('md', 'html') into `run_dir`."""
    run_dir = Path(run_dir)
    return write_report_files(run_dir, build_report(manifest, run_dir, cfg), getattr(cfg, "formats", None))


def write_report_files(run_dir: Path, report: dict[str, Any], formats: list[str] | None = None,
                       gates: list[dict[str, Any]] | None = None) -> dict[str, Path]:
    """Write a built report; `gates` (edgecnn.report.gates results) are stored in report.json under
    'gates' and shown first in report.md and report.html."""
    from edgecnn.report.markdown import render_markdown

    run_dir = Path(run_dir)
    formats = formats or ["json", "md", "html"]
    if gates is not None:
        report = {**report, "gates": gates}
    paths = {"json": write_json(run_dir / "report.json", report)}
    if "md" in formats:
        paths["md"] = write_text(run_dir / "report.md", render_markdown(report, gates))
    if "html" in formats:
        from edgecnn.report.html import render_html
        paths["html"] = write_text(run_dir / "report.html", render_html(report, run_dir, gates))
    return paths
