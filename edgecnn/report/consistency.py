"""Cross-runtime consistency: do the artifacts of one precision give the same answers everywhere?

`consistency_matrix({name: logits})` holds every pair against each other on the same test images:
top-1 agreement (%) and the largest |logit difference|. Pairs agreeing on fewer images than the
threshold are flagged with the indices of the images where their top-1 differs. It takes plain
arrays, so it works however the logits were stored.

`run_consistency(report, run_dir)` feeds it from a run: every measurement row whose `logits`
(a float32 .npy of shape (N, classes), path relative to the run directory) the verify stage saved,
grouped by precision, each group with the PyTorch reference rows (runtime 'torch') added.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MAX_INDICES = 50   # image indices listed per flagged pair; the count is always exact


def _top1(a: np.ndarray) -> np.ndarray:
    return a.argmax(axis=1) if a.ndim == 2 else a.astype(np.int64)


def consistency_matrix(outputs: dict[str, np.ndarray], threshold: float = 99.0,
                       max_indices: int = MAX_INDICES) -> dict[str, Any]:
    """Pairwise top-1 agreement and max |logit diff| between named outputs on the same images.

    `outputs`: {name: logits (N, classes)} or {name: predicted classes (N,)}; a 1-D entry has no
    logit difference (None). Arrays of different N are compared on their first min(N) images (the
    verify stage measures a prefix of the test split); different class counts are an error.
    """
    names = list(outputs)
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    for k, a in arrays.items():
        if a.ndim not in (1, 2) or a.shape[0] == 0:
            raise ValueError(f"consistency: '{k}' has shape {a.shape}; expected logits (N, classes) "
                             "or predicted classes (N,)")
    two_d = [k for k in names if arrays[k].ndim == 2]
    if len({arrays[k].shape[1] for k in two_d}) > 1:
        shapes = ", ".join(f"{k}: {arrays[k].shape}" for k in two_d)
        raise ValueError(f"consistency: logits have different class counts ({shapes}); they come from "
                         "different models or label sets")
    n = min((a.shape[0] for a in arrays.values()), default=0)
    top1 = {k: _top1(arrays[k][:n]) for k in names}
    agree = [[100.0] * len(names) for _ in names]
    diff: list[list[float | None]] = [[0.0 if arrays[k].ndim == 2 else None] * len(names) for k in names]
    flagged = []
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            b = names[j]
            differ = np.flatnonzero(top1[a] != top1[b])
            pct = round(100.0 * (1.0 - len(differ) / n), 2) if n else None
            mad = None
            if arrays[a].ndim == 2 and arrays[b].ndim == 2:
                mad = round(float(np.abs(arrays[a][:n].astype(np.float64) - arrays[b][:n]).max()), 6)
            agree[i][j] = agree[j][i] = pct
            diff[i][j] = diff[j][i] = mad
            if pct is not None and pct < threshold:
                flagged.append({"a": a, "b": b, "top1_agreement": pct, "max_abs_diff": mad,
                                "n_differ": int(len(differ)), "indices": differ[:max_indices].tolist(),
                                "truncated": bool(len(differ) > max_indices)})
    flagged.sort(key=lambda f: f["top1_agreement"])
    return {"names": names, "n": int(n), "threshold": threshold, "top1_agreement": agree,
            "max_abs_diff": diff, "flagged": flagged}


def load_outputs(run_dir: Path, row: dict[str, Any]) -> np.ndarray | None:
    """The row's saved logits (preferred) or predicted classes, or None when it saved neither."""
    for key in ("logits", "predictions"):
        rel = row.get(key)
        if rel:
            p = Path(run_dir) / rel
            if p.is_file():
                return np.load(p, allow_pickle=False)
    return None


def run_consistency(report: dict[str, Any], run_dir: Path, threshold: float = 99.0) -> dict[str, Any]:
    """Consistency matrices per precision for a run; `notes` say what could not be compared."""
    from edgecnn.report.rows import row_key

    groups: dict[str, dict[str, np.ndarray]] = {}
    refs: dict[str, np.ndarray] = {}
    missing = []
    for ref in report.get("reference") or []:
        arr = load_outputs(run_dir, ref)
        if arr is not None:
            refs[f"{ref['artifact']}@{ref['target']} (reference)"] = arr
    for a in report.get("artifacts") or []:
        for m in a.get("measurements") or []:
            if m.get("status", "ok") != "ok":
                continue
            arr = load_outputs(run_dir, m)
            if arr is None:
                missing.append(row_key(m))
                continue
            groups.setdefault(a.get("precision") or "?", {})[row_key(m)] = arr
    notes = []
    if missing:
        notes.append(f"no per-image logits saved for {len(missing)} measurement(s) "
                     f"({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}); the verify stage "
                     "writes them as measurement field 'logits' (see docs/report-schema.md)")
    out: dict[str, Any] = {"threshold": threshold, "groups": {}, "notes": notes}
    for precision, named in sorted(groups.items()):
        named = {**named, **_references_for(precision, refs)}
        if len(named) < 2:
            notes.append(f"{precision}: one output only ({next(iter(named))}), nothing to compare")
            continue
        try:
            out["groups"][precision] = consistency_matrix(named, threshold)
        except ValueError as e:
            notes.append(f"{precision}: {e}")
    return out


def _references_for(precision: str, refs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The PyTorch reference outputs a group is held against: those of the same precision (the
    fake-quant graph for int8), else the float model's. An int8 artifact disagreeing with the float
    model is quantization error, not a runtime inconsistency, so it is only used when nothing closer is."""
    same = {k: v for k, v in refs.items() if precision in k}
    return same or {k: v for k, v in refs.items() if "fp32" in k}
