"""`edgecnn bench`, `edgecnn predict` and `edgecnn targets list|check`: thin layers over edgecnn.bench."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import typer

from edgecnn.errors import EdgecnnError


def _fail() -> None:
    # SystemExit, not typer.Exit: edgecnn.cli.main runs click with standalone_mode=False, which turns
    # typer.Exit into a return value that main() drops; SystemExit reaches main's own handler.
    raise SystemExit(1)


def _out():
    from rich.console import Console
    return Console(highlight=False)


def _f(v: Any, nd: int = 2) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def _test_data(contract: dict[str, Any], source: Optional[str], seed: int, limit: Optional[int]):
    """The test split the artifact was trained against, prepared as its contract says."""
    from edgecnn.data import DataConfig, load_data

    pre = contract.get("preprocess") or {}
    source = source or contract.get("data_source")
    if not source:
        raise EdgecnnError("bench: the artifact's sidecar does not name its data source. Pass --data SOURCE "
                           "(e.g. --data mnist5k or --data imagefolder:PATH), or --data none for latency only.")
    if source == "none":
        import numpy as np
        shape = [1, int(pre.get("channels", 3)), *pre.get("size", [224, 224])]
        n = limit or 64
        return np.random.default_rng(seed).standard_normal((n, *shape[1:]), dtype=np.float32), None
    size = pre.get("size")
    cfg = DataConfig(source=source, image_size=size[0] if size and size[0] == size[1] else None,
                     channels=pre.get("channels"), mean=pre.get("mean"), std=pre.get("std"))
    data = load_data(cfg, seed)
    x, y = data.tensors("test", limit)
    return x.numpy(), y.numpy()


def bench(artifact: Path = typer.Argument(..., help="Artifact file (.onnx, .xml, .tflite) or its .json sidecar."),
          target: list[str] = typer.Option(["local-cpu"], "--target", "-t",
                                           help="Target profile name or YAML path; repeat for several."),
          runs: int = typer.Option(200, "--runs", help="Timed batch-1 runs after the warm-up."),
          warmup: int = typer.Option(20, "--warmup", help="Untimed batch-1 runs first."),
          time_budget: Optional[float] = typer.Option(None, "--time-budget",
                                                      help="Stop timing after this many seconds (at least 20 runs)."),
          threads: Optional[int] = typer.Option(None, "--threads", help="Override the target's thread count."),
          batch: int = typer.Option(32, "--batch", help="Batch for the throughput figure (1: from latency)."),
          limit: Optional[int] = typer.Option(None, "--limit", help="Test images for accuracy (default: all)."),
          data: Optional[str] = typer.Option(None, "--data", help="Data source for the test split (default: the "
                                             "one in the sidecar); 'none': random inputs, latency only."),
          seed: int = typer.Option(0, "--seed", help="The recipe's seed: it decides which images are the test split."),
          repeat: int = typer.Option(1, "--repeat", help="Measure this many times in a row and report how much "
                                     "the p50s differ (latency stability)."),
          json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the measurements to this file."),
          ):
    """Measure an artifact on one or more targets: accuracy, latency (p50/p90/p99), throughput, memory."""
    from edgecnn.bench.measure import MeasureConfig
    from edgecnn.bench.runner import failed_row, measure_artifact
    from edgecnn.bench.targets import TargetError, load_target
    from edgecnn.export import Artifact
    from edgecnn.io import write_json

    art = Artifact.load(artifact)
    cfg = MeasureConfig(runs=runs, warmup=warmup, time_budget_s=time_budget, throughput_batch=batch, limit=limit)
    x, y = _test_data(art.contract, data, seed, limit)
    if repeat < 1:
        raise EdgecnnError(f"--repeat: {repeat} must be >= 1.")
    rows = []
    for name in target:
        t = load_target(name)
        if threads is not None:
            t = dataclasses.replace(t, threads=threads)
        for _ in range(repeat):
            try:
                rows.append(measure_artifact(art, t, (x, y), None, cfg))
            except TargetError as e:   # one bad target must not hide the others' figures
                rows.append(failed_row(art.path.name, t.name, e, fmt=art.format, precision=art.precision))
                break
    _print_rows(rows)
    if repeat > 1:
        for name in dict.fromkeys(r.target for r in rows):
            p50 = [r.latency_ms["p50"] for r in rows if r.target == name and r.ok]
            if len(p50) > 1:
                spread = 100.0 * (max(p50) - min(p50)) / min(p50)
                typer.echo(f"{name}: p50 over {len(p50)} repeats {', '.join(f'{v:.4f}' for v in p50)} ms; "
                           f"spread {spread:.1f}% of the lowest")
    if json_out:
        write_json(json_out, [r.to_dict() for r in rows])
        typer.echo(f"wrote {json_out}")
    if any(r.status == "failed" for r in rows):
        _fail()
    typer.echo(f"next: edgecnn predict {artifact} IMAGE.png")


def _print_rows(rows) -> None:
    from rich.table import Table

    t = Table(title_justify="left")
    for col in ("artifact", "target", "runtime", "thr", "top-1 %", "top-5 %", "p50 ms", "p90 ms", "p99 ms",
                "img/s (batch)", "load s", "peak MiB", "size MB"):
        t.add_column(col, justify="left" if col in ("artifact", "target", "runtime") else "right")
    for r in rows:
        if not r.ok:
            color = "red" if r.status == "failed" else "yellow"
            t.add_row(r.name, r.target, r.runtime or "–", "", f"[{color}]{r.status}[/]: {r.error}")
            continue
        lat = r.latency_ms
        t.add_row(r.name, r.target, r.runtime, str(r.threads or "–"), _f(r.top1), _f(r.top5), _f(lat.get("p50"), 3),
                  _f(lat.get("p90"), 3), _f(lat.get("p99"), 3), f"{_f(r.throughput_ips, 0)} ({r.throughput_batch})",
                  _f(r.load_s, 3), _f(r.peak_rss_mb, 0), _f(r.size_mb, 3))
    _out().print(t)


def predict(artifact: Path = typer.Argument(..., help="Artifact file (.onnx, .xml, .tflite) or its .json sidecar."),
            images: list[Path] = typer.Argument(..., help="Image files (PNG, JPEG, ...)."),
            top_k: int = typer.Option(5, "--top-k", "-k", help="Classes to show per image."),
            runtime: Optional[str] = typer.Option(None, "--runtime", help="Override the format's own runtime."),
            json_out: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
            ):
    """Classify image files with an artifact alone: preprocessing and labels come from its sidecar."""
    import numpy as np

    from edgecnn.data.preprocess import Preprocess
    from edgecnn.export import Artifact
    from edgecnn.runtimes import open_session

    if top_k < 1:
        raise EdgecnnError(f"--top-k: {top_k} must be >= 1.")
    art = Artifact.load(artifact)
    if not art.contract.get("preprocess"):
        raise EdgecnnError(f"{art.sidecar}: has no 'preprocess' entry, so how to prepare an image is unknown. "
                           "Re-export the artifact with `edgecnn run`.")
    pre = Preprocess.from_dict(art.contract["preprocess"])
    names = art.contract.get("class_names") or []
    x = np.concatenate([pre.load_image(p) for p in images])
    with open_session(art, runtime) as session:
        logits = session.run(x)
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    k = min(top_k, probs.shape[1])
    results = []
    for path, p in zip(images, probs):
        idx = np.argsort(-p, kind="stable")[:k]
        results.append({"image": str(path), "top": [{"class": int(i), "label": names[i] if i < len(names) else str(i),
                                                     "score": round(float(p[i]), 6)} for i in idx]})
    if json_out:
        typer.echo(json.dumps(results, indent=2))
        return
    for r in results:
        typer.echo(r["image"])
        for e in r["top"]:
            typer.echo(f"  {e['score']:7.2%}  {e['label']}")


targets_app = typer.Typer(no_args_is_help=True, help="Target profiles (targets/*.yaml): where artifacts are measured.")


@targets_app.command("list")
def targets_list():
    """Every target profile found (./targets, the repository's targets/, the packaged ones)."""
    from rich.table import Table

    from edgecnn.bench.targets import list_targets, target_dirs

    t = Table(title_justify="left")
    for col in ("name", "kind", "threads", "runtimes", "where", "budgets", "description"):
        t.add_column(col)
    for tg in list_targets():
        where = f"{tg.ssh.destination}:{tg.ssh.port}" if tg.ssh else "this machine" + (f" cpus {tg.cpus}" if tg.cpus else "")
        budgets = ", ".join(f"{k} {v:g}" for k, v in dataclasses.asdict(tg.budgets).items() if v is not None)
        t.add_row(tg.name, tg.kind, str(tg.threads), ", ".join(tg.runtimes), where, budgets or "–", tg.description)
    _out().print(t)
    typer.echo(f"searched: {', '.join(str(d) for d in target_dirs())}")
    typer.echo("next: edgecnn targets check NAME")


@targets_app.command("check")
def targets_check(name: str = typer.Argument(..., help="Target profile name or YAML path.")):
    """Is the target reachable, and which of its runtimes answer (with versions)?"""
    from edgecnn.bench.targets import check_target

    res = check_target(name)
    env = res.get("env") or {}
    cpu = env.get("cpu") or {}
    typer.echo(f"target {res['target']} ({res['kind']}): {'reachable' if res['reachable'] else 'NOT usable'}")
    if res["reachable"]:
        typer.echo(f"  host {env.get('hostname')}  python {env.get('python')}  numpy {env.get('numpy')}")
        typer.echo(f"  cpu {cpu.get('model')} ({cpu.get('logical_cpus')} logical), flags: "
                   f"{', '.join(cpu.get('flags') or []) or '–'}")
        if env.get("cuda"):
            typer.echo(f"  cuda {env['cuda']}")
        for r, v in res["runtimes"].items():
            typer.echo(f"  {r:12s} {v or 'MISSING'}")
    if res["error"]:
        typer.echo(f"  problem: {res['error']}")
        _fail()
    typer.echo(f"next: edgecnn bench ARTIFACT --target {res['target']}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
    app.command("predict")(predict)
    app.add_typer(targets_app, name="targets")
