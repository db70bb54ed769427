"""Gates: bounds a run must stay within for CI to pass.

Against a baseline report (a committed report.json), per artifact x target (x runtime):
    accuracy_drop        top-1 points below the baseline's             (--max-accuracy-drop)
    latency_regression   % slower batch-1 p50 than the baseline's       (--max-latency-regression)
Per artifact, no baseline needed:
    size                 MB (10^6 bytes) on disk                        (--max-size)
Per artifact x target, from the target profile's `budgets:` (recorded in the report):
    budget.latency_ms    batch-1 p50, ms
    budget.size_mb       artifact size, MB
    budget.memory_mb     peak resident memory while measuring, MiB

Each check is one result dict: artifact, target, bound, status (passed | failed | skipped), value,
limit, baseline, message. `to_junit` writes them as JUnit XML, one test case per result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from edgecnn.config import check
from edgecnn.report.rows import measurement_rows

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass
class GateConfig:
    max_accuracy_drop: float | None = None        # top-1 percentage points below the baseline; needs a baseline
    max_latency_regression: float | None = None   # percent slower p50 than the baseline; needs a baseline
    max_size: float | None = None                 # MB (10^6 bytes) per artifact
    budgets: bool = True                          # check the targets' budgets recorded in the report

    def __post_init__(self):
        for k in ("max_accuracy_drop", "max_latency_regression", "max_size"):
            v = getattr(self, k)
            check(v is None or v >= 0, k, f"{v} must be >= 0")

    @property
    def needs_baseline(self) -> bool:
        return self.max_accuracy_drop is not None or self.max_latency_regression is not None


def _result(row: dict[str, Any] | None, artifact: str, target: str | None, bound: str, status: str,
            value: float | None, limit: float | None, baseline: float | None, message: str) -> dict[str, Any]:
    return {"artifact": artifact, "target": target, "runtime": (row or {}).get("runtime"), "bound": bound,
            "status": status, "value": None if value is None else round(float(value), 4), "limit": limit,
            "baseline": baseline, "message": message}


def _where(r: dict[str, Any]) -> str:
    return f"{r['artifact']} @ {r['target']}" + (f" [{r['runtime']}]" if r.get("runtime") else "")


def _key(r: dict[str, Any]) -> tuple[str, str, str]:
    return (r["artifact"], r["target"], r.get("runtime") or "")


def check_gates(report: dict[str, Any], baseline: dict[str, Any] | None = None,
                cfg: GateConfig | None = None) -> list[dict[str, Any]]:
    """Every gate result for `report` (see the module docstring); ValueError when a bound needs a
    baseline and none is given."""
    cfg = cfg or GateConfig()
    if cfg.needs_baseline and baseline is None:
        raise ValueError("--max-accuracy-drop and --max-latency-regression compare against a baseline: "
                         "pass --compare BASELINE.json (a report.json of a run to hold this one to)")
    rows = measurement_rows(report)
    out: list[dict[str, Any]] = []
    if baseline is not None and cfg.needs_baseline:
        base = {_key(r): r for r in measurement_rows(baseline)}
        for r in rows:
            b = base.get(_key(r))
            if cfg.max_accuracy_drop is not None:
                out.append(_accuracy(r, b, cfg.max_accuracy_drop))
            if cfg.max_latency_regression is not None:
                out.append(_latency(r, b, cfg.max_latency_regression))
        measured = {_key(r) for r in rows}
        for k, b in base.items():   # an artifact the baseline had and this run lost is a regression too
            if k not in measured:
                out.append(_result(b, b["artifact"], b["target"], "present", FAILED, None, None, None,
                                   f"{_where(b)}: in the baseline but not measured in this run"))
    if cfg.max_size is not None:
        for a in report.get("artifacts") or []:
            out.append(_upper(None, a["name"], None, "size", _mb(a.get("size_bytes")), cfg.max_size, "MB",
                              f"{a['name']}: size"))
    if cfg.budgets:
        budgets = {t: (v or {}).get("budgets") or {} for t, v in (report.get("targets") or {}).items()}
        for r in rows:
            b = budgets.get(r["target"]) or {}
            values = {"latency_ms": r["latency_ms"].get("p50"), "size_mb": _mb(r.get("size_bytes")),
                      "memory_mb": r["memory"].get("peak_rss_mb")}
            names = {"latency_ms": "p50 latency", "size_mb": "size", "memory_mb": "peak memory"}
            units = {"latency_ms": "ms", "size_mb": "MB", "memory_mb": "MiB"}
            for k, limit in b.items():
                if limit is None or k not in values:
                    continue
                out.append(_upper(r, r["artifact"], r["target"], f"budget.{k}", values[k], float(limit), units[k],
                                  f"{_where(r)}: {names[k]} (target '{r['target']}' budget)"))
    return out


def _mb(size_bytes: Any) -> float | None:
    return None if size_bytes is None else size_bytes / 1e6


def _upper(row, artifact, target, bound, value, limit, unit, what) -> dict[str, Any]:
    if value is None:
        return _result(row, artifact, target, bound, FAILED, None, limit, None,
                       f"{what} was not measured, so the limit {limit:g} {unit} cannot be checked")
    ok = value <= limit
    return _result(row, artifact, target, bound, PASSED if ok else FAILED, value, limit, None,
                   f"{what} {value:.3f} {unit} {'within' if ok else 'exceeds'} the limit {limit:g} {unit}")


def _accuracy(r: dict[str, Any], b: dict[str, Any] | None, limit: float) -> dict[str, Any]:
    where = _where(r)
    if b is None:
        return _result(r, r["artifact"], r["target"], "accuracy_drop", SKIPPED, None, limit, None,
                       f"{where}: not in the baseline, nothing to compare with")
    now, then = r["accuracy"].get("top1"), b["accuracy"].get("top1")
    if then is None:
        return _result(r, r["artifact"], r["target"], "accuracy_drop", SKIPPED, None, limit, None,
                       f"{where}: the baseline has no top-1 for it")
    if now is None or r.get("status", "ok") != "ok":
        return _result(r, r["artifact"], r["target"], "accuracy_drop", FAILED, None, limit, then,
                       f"{where}: no top-1 in this run (status {r.get('status')}: {r.get('error') or 'not measured'})")
    drop = then - now
    ok = drop <= limit
    return _result(r, r["artifact"], r["target"], "accuracy_drop", PASSED if ok else FAILED, drop, limit, then,
                   f"{where}: top-1 {now:.2f}% vs baseline {then:.2f}% ({drop:+.2f} points drop, allowed {limit:g})")


def _latency(r: dict[str, Any], b: dict[str, Any] | None, limit: float) -> dict[str, Any]:
    where = _where(r)
    if b is None:
        return _result(r, r["artifact"], r["target"], "latency_regression", SKIPPED, None, limit, None,
                       f"{where}: not in the baseline, nothing to compare with")
    now, then = r["latency_ms"].get("p50"), b["latency_ms"].get("p50")
    if not then:
        return _result(r, r["artifact"], r["target"], "latency_regression", SKIPPED, None, limit, None,
                       f"{where}: the baseline has no p50 latency for it")
    if now is None or r.get("status", "ok") != "ok":
        return _result(r, r["artifact"], r["target"], "latency_regression", FAILED, None, limit, then,
                       f"{where}: no latency in this run (status {r.get('status')}: {r.get('error') or 'not measured'})")
    pct = 100.0 * (now / then - 1.0)
    ok = pct <= limit
    return _result(r, r["artifact"], r["target"], "latency_regression", PASSED if ok else FAILED, pct, limit, then,
                   f"{where}: p50 {now:.3f} ms vs baseline {then:.3f} ms ({pct:+.1f}%, allowed +{limit:g}%)")


def failures(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [g for g in results if g["status"] == FAILED]


def to_junit(results: list[dict[str, Any]], path: str | Path, suite: str = "edgecnn.gates") -> Path:
    """JUnit XML: one <testcase> per result (classname: artifact[@target], name: bound)."""
    from edgecnn.io import write_text

    ts = ET.Element("testsuite", name=suite, tests=str(len(results)),
                    failures=str(sum(g["status"] == FAILED for g in results)), errors="0",
                    skipped=str(sum(g["status"] == SKIPPED for g in results)))
    for g in results:
        cls = g["artifact"] + (f"@{g['target']}" if g.get("target") else "")
        if g.get("runtime"):
            cls += f"[{g['runtime']}]"
        tc = ET.SubElement(ts, "testcase", classname=f"{suite}.{cls}", name=g["bound"], time="0")
        if g["status"] == FAILED:
            ET.SubElement(tc, "failure", message=g["message"], type=g["bound"]).text = (
                f"value: {g.get('value')}\nlimit: {g.get('limit')}\nbaseline: {g.get('baseline')}")
        elif g["status"] == SKIPPED:
            ET.SubElement(tc, "skipped", message=g["message"])
        else:
            ET.SubElement(tc, "system-out").text = g["message"]
    root = ET.Element("testsuites", name="edgecnn", tests=ts.get("tests"), failures=ts.get("failures"))
    root.append(ts)
    ET.indent(root)
    return write_text(path, '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n")
