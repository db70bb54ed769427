"""How long `edgecnn check MODEL --formats onnx openvino tflite` takes, two source trees side by side.

    PYTHONPATH=. python benchmarks/preflight_speed.py --before /tmp/head --repeat 3 \
        --models bn_cnn torchvision:resnet18 --out benchmarks/results/preflight_speed.json

Each run is a fresh process (`edgecnn check` as a user runs it: imports included) with PYTHONPATH
set to the tree being measured; the trees alternate run by run so load drifts hit both alike.
Recorded per run: wall seconds and the process's CPU seconds (user + sys, which a busy machine
inflates far less than wall time), and the load average before each run; medians per tree.
`--before` is a copy of an earlier commit (`git archive COMMIT | tar -x -C DIR`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # edgecnn.io for the atomic write, also without PYTHONPATH=.
FORMATS = ["onnx", "openvino", "tflite"]


def one_run(tree: Path, model: str) -> dict:
    code = ("import sys; from edgecnn.cli import main; sys.argv = ['edgecnn', 'check', %r, '--json'] + "
            "sum([['--formats', f] for f in %r], []); main()") % (model, FORMATS)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    load = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/tmp")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "loadavg_before": [round(v, 2) for v in load],
           "rc": proc.returncode}
    try:
        report = json.loads(proc.stdout[proc.stdout.index("{"):])
        row["ok"] = report["ok"]
        row["per_format_s"] = {c["format"]: c["seconds"] for c in report["checks"]}
    except (ValueError, KeyError):
        row["error"] = (proc.stderr or proc.stdout)[-500:]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="tree of the earlier commit")
    ap.add_argument("--after", type=Path, default=ROOT, help="tree to compare (default: this checkout)")
    ap.add_argument("--models", nargs="+", default=["bn_cnn", "torchvision:resnet18"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/preflight_speed.json")
    args = ap.parse_args(argv)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    results: dict = {}
    for model in args.models:
        runs: dict[str, list] = {k: [] for k in trees}
        for i in range(args.repeat):
            for name, tree in (list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]):
                row = one_run(tree, model)
                runs[name].append(row)
                print(model, name, row, flush=True)
        results[model] = {name: {"median_wall_s": statistics.median(r["wall_s"] for r in rows),
                                 "median_cpu_s": statistics.median(r["cpu_s"] for r in rows),
                                 "all_ok": all(r.get("ok") for r in rows), "runs": rows}
                          for name, rows in runs.items()}
        b, a = results[model]["before"], results[model]["after"]
        results[model]["cpu_ratio_before_over_after"] = round(b["median_cpu_s"] / a["median_cpu_s"], 2)
        results[model]["wall_ratio_before_over_after"] = round(b["median_wall_s"] / a["median_wall_s"], 2)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    doc = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "git_commit": commit,
           "trees": {k: str(v) for k, v in trees.items()}, "formats": FORMATS,
           "environment": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                           "machine": platform.machine(), "loadavg_end": [round(v, 2) for v in os.getloadavg()]},
           "results": results}
    from edgecnn.io import write_json
    write_json(args.out, doc)
    print(json.dumps({m: {k: v for k, v in r.items() if k not in ("before", "after")} for m, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
