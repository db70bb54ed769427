"""Does structured pruning make a model faster in ONNX Runtime? Batch-1 CPU latency, pruned vs not.

For each model: random-init torchvision weights (latency does not depend on their values), 50%
channel pruning with edgecnn.compress.prune (L1, round_to 8, classifier kept), both models exported
with torch.onnx.export(dynamo=True), then timed in one process with the two sessions interleaved
run by run (so a load change on the machine hits both alike), at 1 and 2 intra-op threads.
Medians over --runs runs after --warmup runs. Writes benchmarks/results/prune_latency.json.

    PYTHONPATH=. python benchmarks/prune_latency.py [--runs 200] [--models resnet18 mobilenet_v2]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from edgecnn.compress import PruneConfig, prune
from edgecnn.io import write_json
from edgecnn.models import ModelConfig, build_model

OUT = Path(__file__).parent / "results" / "prune_latency.json"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def export(model: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), dynamo=True, verbose=False)
    return path


def session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def interleaved(sessions: dict[str, object], x: np.ndarray, runs: int, warmup: int) -> dict[str, dict[str, float]]:
    """Milliseconds per run for each session, alternating A, B, A, B (order swapped every run)."""
    names = list(sessions)
    feeds = {n: {s.get_inputs()[0].name: x} for n, s in sessions.items()}
    times = {n: [] for n in names}
    for i in range(warmup + runs):
        order = names if i % 2 == 0 else names[::-1]
        for n in order:
            t0 = time.perf_counter()
            sessions[n].run(None, feeds[n])
            dt = (time.perf_counter() - t0) * 1e3
            if i >= warmup:
                times[n].append(dt)
    out = {}
    for n, ts in times.items():
        ts = sorted(ts)
        out[n] = {"median_ms": round(statistics.median(ts), 3), "p10_ms": round(ts[len(ts) // 10], 3),
                  "p90_ms": round(ts[(9 * len(ts)) // 10], 3), "runs": len(ts)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    import onnxruntime as ort

    load0 = [round(v, 2) for v in os.getloadavg()]
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.size, args.size)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="prune_latency_"))
    for name in args.models:
        model = build_model(ModelConfig(f"torchvision:{name}"), 1000, 3).eval()
        res = prune(model, PruneConfig(ratio=args.ratio, finetune_epochs=0), example_input=x)
        paths = {"unpruned": export(model, x, tmp / f"{name}.onnx"),
                 "pruned": export(res.model, x, tmp / f"{name}_pruned.onnx")}
        row = {"model": name, "input": [1, 3, args.size, args.size], "ratio": args.ratio,
               "macs_unpruned": res.macs_before, "macs_pruned": res.macs_after,
               "macs_ratio": round(res.macs_ratio, 3), "params_unpruned": res.params_before,
               "params_pruned": res.params_after,
               "onnx_bytes": {k: p.stat().st_size for k, p in paths.items()}, "latency": {}}
        for threads in args.threads:
            lat = interleaved({k: session(p, threads) for k, p in paths.items()}, x.numpy(), args.runs, args.warmup)
            lat["speedup"] = round(lat["unpruned"]["median_ms"] / lat["pruned"]["median_ms"], 3)
            row["latency"][f"{threads}_thread{'s' if threads > 1 else ''}"] = lat
        rows.append(row)
        print(f"{name}: MACs {res.macs_ratio:.2f}x lower; " + "; ".join(
            f"{k}: {v['unpruned']['median_ms']:.2f} -> {v['pruned']['median_ms']:.2f} ms ({v['speedup']:.2f}x)"
            for k, v in row["latency"].items()), file=sys.stderr)
    result = {
        "benchmark": "prune_latency",
        "command": "PYTHONPATH=. python benchmarks/prune_latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "what": "batch-1 ONNX Runtime CPU latency of 50%-channel-pruned vs unpruned torchvision models "
                "(random init, L1 importance, round_to 8, classifier kept); sessions interleaved run by run",
        "env": {"onnxruntime": ort.__version__, "torch": torch.__version__, "python": platform.python_version(),
                "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                "load_average_at_start": load0, "load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
        "runs": args.runs, "warmup": args.warmup, "results": rows,
    }
    busy = max(load0[0], os.getloadavg()[0])
    if busy > (os.cpu_count() or 1):
        result["note"] = (f"the machine was shared (1-min load average up to {busy:.1f} on {os.cpu_count()} cores): "
                          "absolute times are inflated and 2 threads can be slower than 1; the pruned/unpruned "
                          "ratios are fairer, since the two sessions ran interleaved under the same load")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
