"""The short summary table printed at the end of `edgecnn run`."""
from __future__ import annotations

from pathlib import Path


def print_summary(result, paths: dict[str, Path]) -> None:
    from rich.table import Table

    from edgecnn.progress import console
    from edgecnn.report import build_report

    report = build_report(result.manifest)
    t = Table(title=f"edgecnn · {result.run_dir}", title_justify="left")
    for col in ("artifact", "target", "top-1 %", "agree %", "p50 ms", "size KiB"):
        t.add_column(col, justify="left" if col in ("artifact", "target") else "right")
    for a in report["artifacts"]:
        for m in a.get("measurements") or [{}]:
            t.add_row(a.get("name", "?"), m.get("target", "–"), _f((m.get("accuracy") or {}).get("top1")),
                      _f((m.get("agreement") or {}).get("top1_agreement") or (a.get("verification") or {}).get("top1_agreement")),
                      _f((m.get("latency_ms") or {}).get("p50"), 3), _f((a.get("size_bytes") or 0) / 1024, 1))
    c = console()
    for s in report["stages"]:
        test = s["metrics"].get("test") if isinstance(s["metrics"].get("test"), dict) else None
        if test:
            c.print(f"{s['name']:>10}: test top-1 {test['top1']:.2f}%")
    if report["artifacts"]:
        c.print(t)
    c.print(f"ran {len(result.ran)} stage(s), skipped {len(result.skipped)} in {result.seconds:.1f} s")
    if "html" in paths:
        c.print(f"open the report: xdg-open {paths['html']}")
    elif "md" in paths:
        c.print(f"report: {paths['md']}")
    if report["artifacts"]:
        c.print(f"gate a later run against this one: edgecnn report RUN --compare {paths['json']} "
                "--max-accuracy-drop 1 --max-latency-regression 25", soft_wrap=True)


def _f(v, nd: int = 2) -> str:
    return "–" if v is None else f"{v:.{nd}f}"
