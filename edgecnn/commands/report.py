"""`edgecnn report RUN`: re-render a run's reports, and gate it for CI.

    edgecnn report runs/quickstart                          # report.json, report.md, report.html again
    edgecnn report runs/ci --compare benchmarks/baselines/ci.json \\
        --max-accuracy-drop 0.5 --max-latency-regression 25 --max-size 1 --junit gates.xml

Exit status: 0 every gate passed (or none asked), 1 a gate failed, 2 a usage error.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from edgecnn.errors import EdgecnnError, did_you_mean

EXIT_GATE_FAILED = 1


def resolve_run(run: Path, runs: Path) -> Path:
    """RUN as given (a run directory) or as a name under --runs."""
    for p in (run, runs / run):
        if (p / "manifest.json").is_file():
            return p
    known = sorted(p.name for p in runs.glob("*") if (p / "manifest.json").is_file()) if runs.is_dir() else []
    hint = did_you_mean(run.name, known) + (f" Runs under '{runs}': {', '.join(known)}." if known else "")
    raise EdgecnnError(f"'{run}' is not a run directory (no manifest.json in '{run}' or '{runs / run}').{hint} "
                       "Make one with 'edgecnn run RECIPE'.")


def report_config(manifest: dict[str, Any], formats: list[str] | None):
    from edgecnn.config import from_dict
    from edgecnn.recipe import ReportConfig

    cfg = from_dict(ReportConfig, (manifest.get("recipe") or {}).get("report") or {}, "report")
    if formats:
        allowed = ("json", "md", "html")
        for f in formats:
            if f not in allowed:
                raise EdgecnnError(f"--format: '{f}' is not a report format.{did_you_mean(f, allowed)} "
                                   f"Allowed: {', '.join(allowed)}.")
        cfg.formats = list(formats)
    return cfg


def report_command(run: Path, runs: Path = Path("runs"), compare: Path | None = None,
                   max_accuracy_drop: float | None = None, max_latency_regression: float | None = None,
                   max_size: float | None = None, budgets: bool = True, junit: Path | None = None,
                   formats: list[str] | None = None) -> int:
    """The command's body, callable from Python: writes the reports, returns the exit status."""
    from edgecnn.progress import console
    from edgecnn.report import build_report, load_report, write_report_files
    from edgecnn.report.gates import GateConfig, check_gates, failures, to_junit

    run_dir = resolve_run(run, runs)
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except json.JSONDecodeError as e:
        raise EdgecnnError(f"'{run_dir / 'manifest.json'}' is not valid JSON ({e}); rerun 'edgecnn run'.") from None
    cfg = report_config(manifest, formats)
    try:
        gcfg = GateConfig(max_accuracy_drop, max_latency_regression, max_size, budgets)
    except ValueError as e:
        raise EdgecnnError(f"--{str(e).replace('_', '-')}") from None
    if gcfg.needs_baseline and compare is None:
        raise EdgecnnError("--max-accuracy-drop and --max-latency-regression hold the run against a baseline: "
                           "add --compare BASELINE.json (a report.json from an earlier run).")
    report = build_report(manifest, run_dir, cfg)
    baseline = load_report(compare) if compare is not None else None
    results = check_gates(report, baseline, gcfg)
    gated = bool(results) or compare is not None or max_size is not None
    paths = write_report_files(run_dir, report, cfg.formats, results if gated else None)
    c = console()
    c.print("wrote " + ", ".join(str(p) for p in paths.values()), soft_wrap=True)
    if junit is not None:
        c.print(f"wrote {to_junit(results, junit)} ({len(results)} test cases)", soft_wrap=True)
    if not gated:
        return 0
    failed = failures(results)
    skipped = sum(g["status"] == "skipped" for g in results)
    for g in failed:
        c.print(f"[bold red]FAIL[/] {g['bound']}: {g['message']}", soft_wrap=True, highlight=False)
    summary = (f"{len(results) - len(failed) - skipped} passed, {len(failed)} failed, {skipped} skipped"
               + (f" against {compare}" if compare else ""))
    if failed:
        c.print(f"[bold red]gates failed[/]: {summary}", soft_wrap=True)
        return EXIT_GATE_FAILED
    c.print(f"[green]gates passed[/]: {summary}", soft_wrap=True)
    return 0


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        run: Path = typer.Argument(..., help="Run directory (runs/<name>) or a run name under --runs."),
        runs: Path = typer.Option(Path("runs"), "--runs", help="Folder that holds run directories."),
        compare: Optional[Path] = typer.Option(None, "--compare", help="Baseline report.json (or run directory) "
                                               "to hold this run against."),
        max_accuracy_drop: Optional[float] = typer.Option(None, "--max-accuracy-drop",
                                                          help="Top-1 percentage points an artifact x target may "
                                                               "lose against the baseline."),
        max_latency_regression: Optional[float] = typer.Option(None, "--max-latency-regression",
                                                               help="Percent an artifact x target's p50 latency may "
                                                                    "grow against the baseline."),
        max_size: Optional[float] = typer.Option(None, "--max-size", help="Largest artifact size allowed, MB "
                                                                          "(10^6 bytes)."),
        no_budgets: bool = typer.Option(False, "--no-budgets", help="Do not check the targets' budgets."),
        junit: Optional[Path] = typer.Option(None, "--junit", help="Write the gate results as JUnit XML here."),
        format: Optional[list[str]] = typer.Option(None, "--format", help="Report formats to write (json, md, "
                                                                          "html); default: the recipe's."),
    ):
        """Re-render a run's reports; with --compare/--max-* (and targets' budgets), gate it for CI.

        Exits 1 naming each artifact and bound that failed.
        """
        code = report_command(run, runs, compare, max_accuracy_drop, max_latency_regression, max_size,
                              not no_budgets, junit, format)
        if code:
            # SystemExit, not typer.Exit: the CLI runs click with standalone_mode=False, which returns
            # typer.Exit's code instead of exiting, and edgecnn.cli.main maps SystemExit to the status.
            raise SystemExit(code)
