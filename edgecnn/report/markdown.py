"""report.md: short enough for a CI job summary."""
from __future__ import annotations

from typing import Any


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def render_markdown(report: dict[str, Any]) -> str:
    recipe = report.get("recipe") or {}
    lines = [f"# edgecnn report: {recipe.get('name', '?')}", "",
             f"recipe `{(report.get('recipe_hash') or '')[:12]}` · data `{(report.get('data') or {}).get('source')}` "
             f"· model `{(recipe.get('model') or {}).get('source')}` · {report.get('finished', '')}", "",
             "## Stages", "", "| stage | test top-1 % | MACs | params | seconds |", "|---|---|---|---|---|"]
    for s in report["stages"]:
        m = s["metrics"]
        test = m.get("test") if isinstance(m.get("test"), dict) else {}
        lines.append(f"| {s['name']} | {_fmt(test.get('top1'))} | {_fmt(m.get('macs'))} | "
                     f"{_fmt(m.get('params'))} | {_fmt(s.get('seconds'), 1)} |")
    if report["artifacts"]:
        lines += ["", "## Artifacts", "",
                  "| artifact | size KiB | agreement % | max abs diff | target | top-1 % | p50 ms | p90 ms | p99 ms |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for a in report["artifacts"]:
            v = a.get("verification") or {}
            rows = a.get("measurements") or [{}]
            for r in rows:
                lat = r.get("latency_ms") or {}
                lines.append(f"| {a.get('name')} | {_fmt((a.get('size_bytes') or 0) / 1024, 1)} | "
                             f"{_fmt(v.get('top1_agreement'))} | {_fmt(v.get('max_abs_diff'), 4)} | "
                             f"{r.get('target', '–')} | {_fmt((r.get('accuracy') or {}).get('top1'))} | "
                             f"{_fmt(lat.get('p50'), 3)} | {_fmt(lat.get('p90'), 3)} | {_fmt(lat.get('p99'), 3)} |")
    lines.append("")
    return "\n".join(lines)
