"""Report figures drawn with matplotlib (Agg), returned as `data:image/png;base64,...` URIs so the
HTML report needs no file beside it. Each function returns None when there is nothing to draw."""
from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

_PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "int8": "^"}


def _figure(w: float, h: float):
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=(w, h), dpi=100)


def to_data_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    # metadata Software=None: no matplotlib version in the bytes, so reruns embed identical images.
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_file_uri(path) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def pareto_plot(rows: list[dict[str, Any]]) -> str | None:
    """Top-1 against batch-1 p50 latency, one colour per target, one marker per precision; the
    per-target Pareto front (rows with `pareto`) joined by a step line."""
    pts = [r for r in rows if r.get("status", "ok") == "ok" and r["latency_ms"].get("p50") is not None
           and r["accuracy"].get("top1") is not None]
    if not pts:
        return None
    fig, ax = _figure(10.5, 5.2)
    targets = sorted({r["target"] for r in pts})
    colors = {t: f"C{i % 10}" for i, t in enumerate(targets)}
    for r in pts:
        x, y = r["latency_ms"]["p50"], r["accuracy"]["top1"]
        ax.scatter(x, y, s=70 if r.get("pareto") else 40, c=colors[r["target"]],
                   marker=_PRECISION_MARKERS.get(r.get("precision") or "", "D"),
                   edgecolors="black" if r.get("pareto") else "none", linewidths=1.2, zorder=3)
        if r.get("pareto"):   # name the front only: the table names the rest, and labels would pile up
            ax.annotate(f"{r['artifact']} @ {r['target']}", (x, y), textcoords="offset points", xytext=(6, -10),
                        fontsize=7, color="#333")
    for t in targets:
        front = sorted((r for r in pts if r["target"] == t and r.get("pareto")), key=lambda r: r["latency_ms"]["p50"])
        if len(front) > 1:
            ax.step([r["latency_ms"]["p50"] for r in front], [r["accuracy"]["top1"] for r in front],
                    where="post", color=colors[t], alpha=0.6, zorder=2)
    lat = [r["latency_ms"]["p50"] for r in pts]
    if min(lat) > 0 and max(lat) / min(lat) > 20:
        ax.set_xscale("log")
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=colors[t], marker="o", ls="", label=t) for t in targets]
    handles += [Line2D([], [], color="gray", marker=m, ls="", label=p) for p, m in _PRECISION_MARKERS.items()
                if any(r.get("precision") == p for r in pts)]
    handles.append(Line2D([], [], color="gray", marker="o", ls="", markeredgecolor="black", label="Pareto front"))
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlabel("latency p50, ms (batch 1)")
    ax.set_ylabel("test top-1, %")
    ax.set_title("Accuracy against latency (front per target: nothing faster is as accurate)", fontsize=10)
    ax.grid(alpha=0.3)
    return to_data_uri(fig)


def size_plot(artifacts: list[dict[str, Any]]) -> str | None:
    arts = [a for a in artifacts if a.get("size_bytes")]
    if not arts:
        return None
    fig, ax = _figure(7.5, 0.5 + 0.35 * len(arts))
    colors = {"fp32": "C0", "fp16": "C2", "int8": "C1"}
    kib = [a["size_bytes"] / 1024 for a in arts]
    ax.barh(range(len(arts)), kib, color=[colors.get(a.get("precision") or "", "C7") for a in arts])
    ax.set_yticks(range(len(arts)), [f"{a['name']} ({a.get('precision')})" for a in arts], fontsize=8)
    ax.invert_yaxis()
    for i, v in enumerate(kib):
        ax.text(v, i, f" {v:,.1f}", va="center", fontsize=8)
    ax.set_xlabel("size on disk, KiB (all files of the artifact)")
    ax.set_xlim(0, max(kib) * 1.18)
    ax.grid(axis="x", alpha=0.3)
    return to_data_uri(fig)


def sensitivity_curves(sens: Any) -> dict[str, list[tuple[float, float]]]:
    """{layer: [(ratio, top1), ...]} from the shapes a sensitivity scan may be stored in:
    {"ratios": [...], "layers"|"groups": {name: [top1...]}}, {layer: {ratio: top1}}, or rows of
    {layer|group|name, ratio, top1|accuracy}. Unknown shapes give {}."""
    curves: dict[str, list[tuple[float, float]]] = {}
    if isinstance(sens, dict):
        ratios = sens.get("ratios")
        table = sens.get("layers") or sens.get("groups") or sens.get("curves")
        if isinstance(table, list):
            sens = table
        elif isinstance(table, dict) and ratios:
            for k, v in table.items():
                vals = v.get("top1", v.get("accuracy")) if isinstance(v, dict) else v
                if isinstance(vals, list):
                    curves[str(k)] = [(float(r), float(a)) for r, a in zip(ratios, vals) if a is not None]
            return curves
        else:
            for k, v in sens.items():
                if isinstance(v, dict) and all(_isnum(r) for r in v):
                    curves[str(k)] = sorted((float(r), float(a)) for r, a in v.items() if _isnum(a))
            return curves
    if isinstance(sens, list):
        for row in sens:
            if not isinstance(row, dict):
                continue
            name = row.get("layer", row.get("group", row.get("name")))
            acc = row.get("top1", row.get("accuracy"))
            if name is not None and _isnum(row.get("ratio")) and _isnum(acc):
                curves.setdefault(str(name), []).append((float(row["ratio"]), float(acc)))
            elif name is not None and isinstance(row.get("ratios"), list) and isinstance(acc, list):
                curves[str(name)] = [(float(r), float(a)) for r, a in zip(row["ratios"], acc) if _isnum(a)]
        for k in curves:
            curves[k].sort()
    return curves


def _isnum(v: Any) -> bool:
    try:
        float(v)
        return v is not None and not isinstance(v, bool)
    except (TypeError, ValueError):
        return False


def sensitivity_plot(sens: Any) -> str | None:
    curves = sensitivity_curves(sens)
    if not curves:
        return None
    fig, ax = _figure(7.5, 4.2)
    for i, (name, pts) in enumerate(curves.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1,
                color=f"C{i % 10}", label=name if len(curves) <= 12 else None)
    ax.set_xlabel("pruning ratio of the layer (share of channels removed)")
    ax.set_ylabel("top-1, %")
    ax.set_title("Per-layer pruning sensitivity", fontsize=10)
    if len(curves) <= 12:
        ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return to_data_uri(fig)


def confusion_plot(cm: list[list[int]], names: list[str], title: str) -> str:
    a = np.asarray(cm)
    k = len(a)
    size = min(7.0, 2.2 + 0.3 * k)
    fig, ax = _figure(size, size * 0.85)
    # Row-normalized colour (recall per true class), raw counts as text.
    norm = a / np.maximum(a.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if a[i, j]:
                    ax.text(j, i, str(a[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), names[:k], fontsize=7, rotation=45 if max(map(len, names[:k])) > 3 else 0)
        ax.set_yticks(range(k), names[:k], fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    return to_data_uri(fig)


def agreement_heatmap(matrix: dict[str, Any], title: str) -> str:
    names = matrix["names"]
    a = np.array([[np.nan if v is None else v for v in row] for row in matrix["top1_agreement"]], dtype=float)
    k = len(names)
    fig, ax = _figure(min(9, 3 + 0.55 * k), min(7, 2.2 + 0.45 * k))
    lo = min(float(np.nanmin(a)), matrix.get("threshold", 99.0) - 1)
    im = ax.imshow(a, cmap="RdYlGn", vmin=lo, vmax=100)
    for i in range(k):
        for j in range(k):
            if not np.isnan(a[i, j]):
                ax.text(j, i, f"{a[i, j]:.1f}", ha="center", va="center", fontsize=7)
    # Cut long names in the middle: the end holds the target, which tells rows apart.
    short = [n if len(n) <= 34 else n[:15] + "…" + n[-18:] for n in names]
    ax.set_xticks(range(k), short, fontsize=7, rotation=35, ha="right")
    ax.set_yticks(range(k), short, fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.04, label="top-1 agreement, %")
    ax.set_title(title, fontsize=9)
    return to_data_uri(fig)
