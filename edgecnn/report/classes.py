"""Per-class precision and recall and the confusion matrix, from per-image outputs and labels."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(true class, predicted class) counts."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels.astype(np.int64), pred.astype(np.int64)), 1)
    return cm


def per_class(outputs: np.ndarray, labels: np.ndarray, class_names: list[str] | None = None) -> dict[str, Any]:
    """`outputs`: logits (N, classes) or predicted classes (N,); `labels`: (N,) true classes.

    Precision of class c: of the images predicted c, the share that are c. Recall: of the images
    that are c, the share predicted c. Both in percent; None where the denominator is 0.
    """
    outputs, labels = np.asarray(outputs), np.asarray(labels).astype(np.int64)
    n = min(len(outputs), len(labels))
    pred = outputs[:n].argmax(1) if outputs.ndim == 2 else outputs[:n].astype(np.int64)
    labels = labels[:n]
    k = max(outputs.shape[1] if outputs.ndim == 2 else 0, int(labels.max(initial=-1)) + 1,
            int(pred.max(initial=-1)) + 1, len(class_names or []))
    cm = confusion_matrix(pred, labels, k)
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(0), cm.sum(1)
    names = list(class_names or []) + [str(i) for i in range(len(class_names or []), k)]
    rows = []
    for c in range(k):
        p = 100.0 * tp[c] / predicted[c] if predicted[c] else None
        r = 100.0 * tp[c] / actual[c] if actual[c] else None
        f1 = 2 * p * r / (p + r) if p is not None and r is not None and (p + r) > 0 else None
        rows.append({"class": names[c], "precision": _r(p), "recall": _r(r), "f1": _r(f1),
                     "support": int(actual[c])})
    return {"n": int(n), "top1": _r(100.0 * tp.sum() / n if n else None), "classes": rows,
            "confusion": cm.tolist()}


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 2)


def run_per_class(report: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Per-class figures for each artifact (its first measurement with saved outputs), given the
    test labels the verify stage saved (`labels`: an int .npy, path relative to the run dir)."""
    from edgecnn.report.consistency import load_outputs

    labels_rel = (report.get("predictions") or {}).get("labels")
    notes = []
    rows = [m for a in report.get("artifacts") or [] for m in a.get("measurements") or []]
    if not any(m.get("logits") or m.get("predictions") for m in rows + list(report.get("reference") or [])):
        return {"artifacts": {}, "notes": ["no per-class figures: no measurement saved per-image logits"]}
    if labels_rel and (Path(run_dir) / labels_rel).is_file():
        labels = np.load(Path(run_dir) / labels_rel, allow_pickle=False)
    else:
        labels, why = labels_from_data(report)
        if labels is None:
            notes.append("no per-class precision/recall or confusion matrix: the verify stage saved no test labels "
                         f"(metrics field 'labels', an int .npy of the measured images' classes) and {why}")
            return {"artifacts": {}, "notes": notes}
        notes.append("per-class figures use test labels re-read from the recipe's data source (same fingerprint "
                     "as the run): the verify stage saved none")
    names = (report.get("data") or {}).get("classes")
    out = {}
    sources = [(a["name"], a.get("measurements") or []) for a in report.get("artifacts") or []]
    sources += [(f"{r['artifact']} (reference)", [r]) for r in report.get("reference") or []]
    for name, rows in sources:
        for m in rows:
            arr = load_outputs(run_dir, m)
            if arr is not None:
                out[name] = {"measurement": f"{m.get('artifact')}@{m.get('target')}", **per_class(arr, labels, names)}
                break
        else:
            notes.append(f"{name}: no per-image outputs saved, left out of the per-class tables")
    return {"artifacts": out, "notes": notes}


def labels_from_data(report: dict[str, Any]) -> tuple[np.ndarray | None, str]:
    """The test split's labels, in order, re-read from the recipe's data source when its
    fingerprint still matches the run's (the verify stage measures a prefix of that split)."""
    data = report.get("data") or {}
    recipe_data = (report.get("recipe") or {}).get("data")
    if not recipe_data or not data.get("fingerprint"):
        return None, "the report has no data source to re-read them from"
    try:
        from edgecnn.config import from_dict
        from edgecnn.data import DataConfig, load_data

        bundle = load_data(from_dict(DataConfig, recipe_data, "data"), (report.get("recipe") or {}).get("seed", 0))
    except Exception as e:  # noqa: BLE001 - a data source that no longer loads only costs this section
        return None, f"re-reading the data source failed ({e})"
    if bundle.fingerprint != data["fingerprint"]:
        return None, "the data source changed since the run (fingerprint differs)"
    return bundle.tensors("test")[1].numpy(), ""
