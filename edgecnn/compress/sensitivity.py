"""Pruning sensitivity: how much accuracy each group of coupled channels loses when cut alone.

`sensitivity_scan` prunes one group at a time (a copy of the model, no fine-tuning) at each ratio
and measures validation top-1: the classic per-layer scan (Li et al., 2017, "Pruning Filters for
Efficient ConvNets"). `ratios_from_sensitivity` turns the table into per-group ratios for a global
target: every group gets the largest ratio whose interpolated accuracy drop stays under one shared
tolerance, and the tolerance is bisected until the channel-weighted mean ratio meets the target.
`plot_sensitivity` draws the table (PNG, written atomically).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgecnn.data import DataBundle
from edgecnn.io import atomic_path
from edgecnn.train import evaluate

if TYPE_CHECKING:
    from edgecnn.compress.prune import PruneConfig

__all__ = ["SensitivityResult", "sensitivity_scan", "ratios_from_sensitivity", "plot_sensitivity"]


@dataclass
class SensitivityResult:
    baseline_top1: float                   # unpruned top-1 (percent) on the scanned images
    ratios: list[float]                    # the scan points
    channels: dict[str, int]               # group root layer -> its output channels
    top1: dict[str, list[float]]           # group root layer -> top-1 at each ratio
    split: str = "val"
    images: int = 0                        # images per evaluation
    rows: list[dict[str, Any]] = field(default_factory=list)   # flat table: layer, ratio, top1, drop

    def to_dict(self) -> dict[str, Any]:
        return {"baseline_top1": self.baseline_top1, "ratios": self.ratios, "channels": self.channels,
                "split": self.split, "images": self.images, "rows": self.rows}

    def table(self) -> str:
        """Markdown table: one row per group, one column per ratio (top-1 %)."""
        head = "| layer | channels | " + " | ".join(f"{r:.0%}" for r in self.ratios) + " |"
        sep = "|---|---:|" + "---:|" * len(self.ratios)
        lines = [head, sep]
        for name, accs in self.top1.items():
            lines.append(f"| {name} | {self.channels[name]} | " + " | ".join(f"{a:.1f}" for a in accs) + " |")
        return "\n".join(lines)


def sensitivity_scan(model: nn.Module, data: DataBundle, config: PruneConfig | None = None,
                     ratios: list[float] | None = None, split: str = "val", limit: int | None = None,
                     example: torch.Tensor | None = None) -> SensitivityResult:
    """Top-1 on `split` with each prunable group cut alone at each ratio (the model is not changed)."""
    from edgecnn.compress.prune import PruneConfig, _names, _resolve_ignored, cut, prunable_groups

    cfg = config or PruneConfig()
    ratios = sorted(ratios or cfg.sensitivity_ratios)
    limit = limit if limit is not None else cfg.sensitivity_limit
    example = data.example_input(1) if example is None else example
    model = copy.deepcopy(model).cpu().eval()
    groups = prunable_groups(model, cfg, example)
    ignored_names = _names(model, _resolve_ignored(model, cfg.ignore))
    base = evaluate(model, data, split, limit=limit)
    top1: dict[str, list[float]] = {}
    rows = []
    for name in groups:
        top1[name] = []
        for r in ratios:
            m = copy.deepcopy(model)
            cut(m, cfg, example, [m.get_submodule(n) for n in ignored_names], {name: r})
            acc = evaluate(m.eval(), data, split, limit=limit)["top1"]
            top1[name].append(acc)
            rows.append({"layer": name, "ratio": r, "top1": acc, "drop": round(base["top1"] - acc, 2)})
    return SensitivityResult(base["top1"], ratios, groups, top1, split, base["n"], rows)


def _drop_curve(sens: SensitivityResult, name: str) -> tuple[list[float], list[float]]:
    """(ratios, accuracy drop) from (0, 0), made non-decreasing so it can be inverted."""
    xs, ys = [0.0], [0.0]
    for r, a in zip(sens.ratios, sens.top1[name]):
        xs.append(r)
        ys.append(max(ys[-1], sens.baseline_top1 - a))
    return xs, ys


def _ratio_at(xs: list[float], ys: list[float], tol: float, max_ratio: float) -> float:
    """Largest ratio whose linearly interpolated drop is <= tol; past the last point the last
    segment's slope is extended (flat curves then run to max_ratio)."""
    for i in range(1, len(xs)):
        if ys[i] > tol:
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            return min(max_ratio, x0 + (x1 - x0) * (tol - y0) / (y1 - y0))
    x0, x1, y0, y1 = xs[-2], xs[-1], ys[-2], ys[-1]
    if y1 - y0 <= 1e-9:
        return max_ratio
    return min(max_ratio, x1 + (x1 - x0) * (tol - y1) / (y1 - y0))


def ratios_from_sensitivity(sens: SensitivityResult, target: float, max_ratio: float = 0.9) -> dict[str, float]:
    """Per-group ratios whose channel-weighted mean is `target`, cutting insensitive groups more.

    Every group gets the largest ratio at which its own scan lost no more than a tolerance t;
    t is bisected so that sum(ratio * channels) / sum(channels) = target. When even the largest
    tolerance cannot reach the target (every group at max_ratio), the ratios are max_ratio.
    """
    curves = {n: _drop_curve(sens, n) for n in sens.top1}
    total = sum(sens.channels[n] for n in curves)
    if not curves:
        return {}

    def mean_ratio(tol: float) -> tuple[float, dict[str, float]]:
        rs = {n: _ratio_at(xs, ys, tol, max_ratio) for n, (xs, ys) in curves.items()}
        return sum(r * sens.channels[n] for n, r in rs.items()) / total, rs

    lo, hi = 0.0, 100.0   # tolerance in top-1 percentage points
    if mean_ratio(hi)[0] < target:
        return {n: max_ratio for n in curves}
    for _ in range(60):
        mid = (lo + hi) / 2
        if mean_ratio(mid)[0] < target:
            lo = mid
        else:
            hi = mid
    return {n: round(r, 4) for n, r in mean_ratio(hi)[1].items()}


def plot_sensitivity(sens: SensitivityResult, path: str | Path) -> Path:
    """Top-1 vs prune ratio, one line per group; written atomically as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure   # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, accs in sens.top1.items():
        ax.plot([0.0, *sens.ratios], [sens.baseline_top1, *accs], marker="o", ms=3, lw=1.2,
                label=f"{name} ({sens.channels[name]})")
    ax.set_xlabel("share of the group's channels removed (no fine-tuning)")
    ax.set_ylabel(f"top-1 % on {sens.split} ({sens.images} images)")
    ax.set_title("Pruning sensitivity per channel group")
    ax.grid(alpha=0.3)
    if len(sens.top1) <= 16:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
