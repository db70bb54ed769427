"""Normalize what the export and verify stages recorded into the report's row shapes.

The stages are free to grow fields; the report reads them through these functions only, so a
renamed or missing field degrades to `None` (shown as '–') instead of breaking every renderer.
Both measurement shapes seen in the tree are accepted: the flat `edgecnn.bench.measure.Measurement`
(`name`, `top1`, `agreement_top1`, `throughput_ips`, `load_s`) and the nested one (`artifact`,
`accuracy {top1}`, `agreement {top1_agreement}`, `throughput`, `load_seconds`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Keys of a normalized measurement that are not copied verbatim from the stage's dict.
_LATENCY_KEYS = ("p50", "p90", "p99", "mean", "std", "min", "max", "runs")


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def _sub(d: dict[str, Any], key: str) -> dict[str, Any]:
    v = d.get(key)
    return v if isinstance(v, dict) else {}


def artifact_name(a: dict[str, Any]) -> str:
    """The name a measurement row uses for this artifact: `name`, else the main file's name."""
    if a.get("name"):
        return str(a["name"])
    contract = _sub(a, "contract")
    path = a.get("path") or contract.get("file")
    if path:
        return Path(str(path)).name
    return f"{a.get('format', '?')}-{a.get('precision', '?')}"


def _aliases(a: dict[str, Any]) -> set[str]:
    """Every name a measurement might use to point at artifact `a`."""
    contract = _sub(a, "contract")
    out = {artifact_name(a), f"{a.get('format')}-{a.get('precision')}", f"{a.get('format')}_{a.get('precision')}"}
    for p in (a.get("path"), contract.get("file"), a.get("sidecar")):
        if p:
            out |= {Path(str(p)).name, str(p)}
    return out


def _compute_precision(m: dict[str, Any]) -> str | None:
    """The precision the runtime says it computed in, where it says (OpenVINO's compiled
    INFERENCE_PRECISION_HINT: 'bf16' by default on CPUs with bf16 units, whatever the file holds)."""
    options = _sub(_sub(_sub(m, "env"), "session"), "options")
    p = options.get("inference_precision")
    return str(p) if p else None


def runtime_label(r: dict[str, Any]) -> str | None:
    """The runtime column of a normalized row: the runtime, plus the compute precision where an fp32
    artifact ran in less than f32 (an 'fp32' figure that was computed in bf16 must say so)."""
    cp = r.get("compute_precision")
    if r.get("runtime") and r.get("precision") == "fp32" and cp and cp != "f32":
        return f"{r['runtime']} ({cp} compute)"
    return r.get("runtime")


def normalize_measurement(m: dict[str, Any]) -> dict[str, Any]:
    """One artifact x target (x runtime) row in the report's shape (docs/report-schema.md)."""
    acc, agr, tp, mem = _sub(m, "accuracy"), _sub(m, "agreement"), m.get("throughput"), _sub(m, "memory")
    lat = _sub(m, "latency_ms")
    if isinstance(tp, dict):
        throughput = {"images_per_s": _first(tp, "images_per_s", "ips"), "batch": tp.get("batch")}
    else:
        throughput = {"images_per_s": _first(m, "throughput_ips") if tp is None else tp,
                      "batch": m.get("throughput_batch")}
    status = m.get("status") or "ok"
    return {
        "artifact": str(_first(m, "artifact", "name") or "?"),
        "target": str(m.get("target") or "?"),
        "runtime": m.get("runtime"),
        "format": m.get("format"),
        "precision": m.get("precision"),
        "status": status,
        "error": m.get("error"),
        "accuracy": {"top1": _first(acc, "top1") if acc else m.get("top1"),
                     "top5": _first(acc, "top5") if acc else m.get("top5"),
                     "n": _first(acc, "n") if acc.get("n") is not None else _first(m, "n_images", "n")},
        "agreement": {"top1_agreement": _first(agr, "top1_agreement") if agr else m.get("agreement_top1"),
                      "max_abs_diff": _first(agr, "max_abs_diff") if agr else m.get("max_abs_diff"),
                      "mean_abs_diff": _first(agr, "mean_abs_diff") if agr else m.get("mean_abs_diff")},
        "latency_ms": {k: lat.get(k) for k in _LATENCY_KEYS if k in lat},
        "throughput": throughput,
        "load_seconds": _first(m, "load_seconds", "load_s"),
        "memory": {"peak_rss_mb": _first(mem, "peak_rss_mb") if mem else m.get("peak_rss_mb"),
                   "rss_added_mb": _first(mem, "rss_added_mb") if mem else m.get("rss_added_mb")},
        "size_bytes": m.get("size_bytes"),
        "threads": m.get("threads"),
        "remote": bool(m.get("remote", False)),
        "compute_precision": _compute_precision(m),
        "env": m.get("env") or {},
        # Per-image outputs on the measured test images, paths relative to the run directory.
        "logits": m.get("logits"),
        "predictions": m.get("predictions"),
    }


def normalize_artifact(a: dict[str, Any], measurements: list[dict[str, Any]]) -> dict[str, Any]:
    """One exported artifact with its measurements (already normalized) attached."""
    contract = _sub(a, "contract")
    v = _sub(a, "verification")
    names = _aliases(a)
    rows = [m for m in measurements if m["artifact"] in names]
    for m in rows:   # rows name the artifact by file; the report names it one way
        m["artifact"] = artifact_name(a)
        m["format"] = m.get("format") or a.get("format")
        m["precision"] = m.get("precision") or a.get("precision")
    size = a.get("size_bytes")
    if size is None and isinstance(contract.get("files"), dict):
        size = sum(int(f.get("bytes", 0)) for f in contract["files"].values()) or None
    return {
        "name": artifact_name(a),
        "format": a.get("format") or contract.get("format"),
        "precision": a.get("precision") or contract.get("precision"),
        "path": a.get("path") or contract.get("file"),
        "size_bytes": size,
        "sha256": a.get("sha256") or contract.get("sha256"),
        "contract": contract or None,
        "verification": {"top1_agreement": _percent(_first(v, "top1_agreement", "agreement")),
                         "max_abs_diff": v.get("max_abs_diff"), "n": _first(v, "n", "samples"),
                         "passed": _first(v, "passed", "ok"), **{k: x for k, x in v.items() if k not in (
                             "top1_agreement", "agreement", "max_abs_diff", "n", "samples", "passed", "ok")}},
        "measurements": rows,
    }


def _percent(v: Any) -> Any:
    """Export verification records agreement as a share (0..1), measurements as percent; the
    report uses percent throughout. A verified artifact agreeing on <= 1% of images does not occur."""
    return round(100.0 * v, 2) if isinstance(v, (int, float)) and 0 <= v <= 1.0 else v


def measurement_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every artifact measurement, flat, each with `artifact`, `target`, `size_bytes` filled."""
    out = []
    for a in report.get("artifacts") or []:
        for m in a.get("measurements") or []:
            out.append({**m, "size_bytes": m.get("size_bytes") or a.get("size_bytes")})
    return out


def row_key(m: dict[str, Any]) -> str:
    """`artifact@target`, with the runtime added when it is not the format's own."""
    own = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert", "torch": "torch"}
    rt = m.get("runtime")
    suffix = f"[{rt}]" if rt and own.get(m.get("format") or "") not in (None, rt) else ""
    return f"{m.get('artifact')}@{m.get('target')}{suffix}"


# --------------------------------------------------------------------------- Pareto front

def pareto_front(latency: list[float | None], accuracy: list[float | None]) -> list[bool]:
    """For points (latency, accuracy): True where no other point is at least as fast and at least
    as accurate and strictly better in one. Points missing either value are never on the front."""
    lat = np.array([np.nan if v is None else float(v) for v in latency])
    acc = np.array([np.nan if v is None else float(v) for v in accuracy])
    ok = ~(np.isnan(lat) | np.isnan(acc))
    front = []
    for i in range(len(lat)):
        if not ok[i]:
            front.append(False)
            continue
        dominated = ok & (lat <= lat[i]) & (acc >= acc[i]) & ((lat < lat[i]) | (acc > acc[i]))
        front.append(not bool(dominated.any()))
    return front


def mark_pareto(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Set `pareto` on each ok row (front computed per target: latencies on different machines do
    not compete); returns {target: [row keys on the front, fastest first]}."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        r["pareto"] = False
        if r.get("status", "ok") == "ok":
            by_target.setdefault(r["target"], []).append(r)
    out = {}
    for target, group in by_target.items():
        flags = pareto_front([g["latency_ms"].get("p50") for g in group], [g["accuracy"].get("top1") for g in group])
        for g, f in zip(group, flags):
            g["pareto"] = f
        on = sorted((g for g in group if g["pareto"]), key=lambda g: g["latency_ms"]["p50"])
        out[target] = [row_key(g) for g in on]
    return out
