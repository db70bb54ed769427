"""report.md: short enough for a CI job summary (GitHub caps one at 1 MiB; this stays a few KiB).

Tables only, no images: a job summary cannot show the HTML report's embedded plots.
"""
from __future__ import annotations

from typing import Any

from edgecnn.report.rows import measurement_rows, runtime_label

DASH = "–"


def fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def si(v: Any) -> str:
    """2466000 -> '2.47 M': MACs and parameter counts."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return fmt(v)
    for div, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(v) >= div:
            return f"{v / div:.2f}{unit}"
    return f"{v:g}"


def kib(v: Any) -> str:
    return DASH if v is None else f"{v / 1024:,.1f}"


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def render_markdown(report: dict[str, Any], gates: list[dict[str, Any]] | None = None) -> str:
    """The report as GitHub-flavoured markdown; `gates` (edgecnn.report.gates results) adds a section."""
    recipe = report.get("recipe") or {}
    data = report.get("data") or {}
    lines = [f"# edgecnn report: {recipe.get('name', '?')}", "",
             f"recipe `{(report.get('recipe_hash') or '')[:12]}` · data `{data.get('source', DASH)}` "
             f"· model `{(recipe.get('model') or {}).get('source', DASH)}` · finished {(report.get('run') or {}).get('finished') or DASH} "
             f"· schema `{report.get('schema')}`", ""]
    if gates:
        lines += _gates(gates)
    lines += ["## Stages", ""]
    lines += _table(["stage", "kind", "top-1 %", "split", "MACs", "params", "seconds"],
                    [[s["name"], s.get("kind") or DASH, fmt((s.get("accuracy") or {}).get("top1")),
                      (s.get("accuracy") or {}).get("split") or DASH, si(s.get("macs")),
                      si(s.get("params")), fmt(s.get("seconds"), 1)] for s in report.get("stages") or []])
    lines += _finetune_comparison(report.get("stages") or [])
    arts = report.get("artifacts") or []
    if arts:
        lines += ["", "## Artifacts", ""]
        lines += _table(["artifact", "format", "precision", "size KiB", "verified agreement %", "max abs diff", "sha256"],
                        [[a["name"], a.get("format") or DASH, a.get("precision") or DASH, kib(a.get("size_bytes")),
                          fmt((a.get("verification") or {}).get("top1_agreement")),
                          fmt((a.get("verification") or {}).get("max_abs_diff"), 4),
                          f"`{(a.get('sha256') or '')[:12]}`" if a.get("sha256") else DASH] for a in arts])
    rows = measurement_rows(report) + [r for r in report.get("reference") or []]
    if rows:
        lines += ["", "## Measurements", "",
                  "Batch-1 latency; ★ marks the accuracy/latency Pareto front of each target.", ""]
        lines += _table(["artifact", "target", "runtime", "top-1 %", "agreement %", "p50 ms", "p90 ms", "p99 ms",
                         "img/s", "peak RSS MiB", ""],
                        [[r["artifact"], r["target"], runtime_label(r) or DASH,
                          fmt(r["accuracy"].get("top1")) if r.get("status", "ok") == "ok" else f"{r.get('status')}: {r.get('error') or ''}",
                          fmt(r["agreement"].get("top1_agreement")), fmt(r["latency_ms"].get("p50"), 3),
                          fmt(r["latency_ms"].get("p90"), 3), fmt(r["latency_ms"].get("p99"), 3),
                          fmt(r["throughput"].get("images_per_s"), 0), fmt(r["memory"].get("peak_rss_mb"), 0),
                          "★" if r.get("pareto") else ""] for r in rows])
    cons = report.get("consistency") or {}
    if cons.get("groups"):
        lines += ["", "## Cross-runtime consistency", ""]
        for precision, m in cons["groups"].items():
            flagged = m.get("flagged") or []
            lo = min((v for row in m["top1_agreement"] for v in row if v is not None), default=None)
            if not flagged:
                lines.append(f"- **{precision}**: {len(m['names'])} outputs on {m['n']} images, every pair agrees "
                             f"on ≥ {m['threshold']:g}% (lowest {fmt(lo)}%).")
                continue
            lines.append(f"- **{precision}**: {len(flagged)} pair(s) below {m['threshold']:g}% top-1 agreement:")
            for f in flagged[:10]:
                idx = ", ".join(map(str, f["indices"][:12])) + (", ..." if f["n_differ"] > 12 else "")
                lines.append(f"  - `{f['a']}` vs `{f['b']}`: {fmt(f['top1_agreement'])}% "
                             f"({f['n_differ']} images differ: {idx}); max logit diff {fmt(f['max_abs_diff'], 4)}")
    notes = report.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines.append("")
    return "\n".join(lines)


def _finetune_comparison(stages: list[dict[str, Any]]) -> list[str]:
    """A prune stage's distillation vs plain fine-tune figures (compare_plain_finetune), same model and epochs."""
    out = []
    for s in stages:
        m = s.get("metrics") or {}
        if m.get("top1_after_plain_finetune") is None:
            continue
        split = m.get("eval_split") or "val"
        row = [[s["name"], split, fmt(m.get("top1_after_distill_finetune")), fmt(m.get("top1_after_plain_finetune"))]]
        if m.get("test_top1_after_plain_finetune") is not None:
            row.append([s["name"], "test", fmt(m.get("test_top1_after_distill_finetune")),
                        fmt(m.get("test_top1_after_plain_finetune"))])
        out += ["", "## Fine-tune after pruning: distillation vs plain", "",
                "The same pruned model, the same epochs and learning-rate schedule; top-1 %.", ""]
        out += _table(["stage", "split", "distillation", "plain cross-entropy"], row)
    return out


def _gates(gates: list[dict[str, Any]]) -> list[str]:
    failed = [g for g in gates if g["status"] == "failed"]
    head = (f"**Gates: {len(failed)} of {len(gates)} failed**" if failed
            else f"**Gates: all {sum(g['status'] == 'passed' for g in gates)} passed**")
    out = ["## Gates", "", head, ""]
    shown = failed or [g for g in gates if g["status"] != "skipped"]
    cap = 40   # a job summary stays short; report.json and the JUnit file hold every result
    more = len(shown) - cap
    shown = shown[:cap]
    if shown:
        out += _table(["", "artifact", "target", "bound", "value", "limit", "detail"],
                      [["❌" if g["status"] == "failed" else "✅", g["artifact"], g.get("target") or DASH, g["bound"],
                        fmt(g.get("value"), 3), fmt(g.get("limit"), 3), g.get("message", "")] for g in shown])
    if more > 0:
        out += ["", f"... and {more} more (report.json 'gates')."]
    return out + [""]
