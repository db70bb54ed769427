"""edgecnn's int8 ONNX against ONNX Runtime's own quantize_static output: same kernels? and how far
one timing run's verdict carries to the next.

The suite times each pair once (one process, 40 interleaved rounds at 224) and its 95% interval
covers the rounds of that run only. This script separates the two questions that verdict mixes:

1. Kernels. The suite's seed-0 224-px model (`suite.train` + `suite.adapt_224`, or --load-model),
   edgecnn PTQ (the suite's settings) exported as QDQ ONNX and lowered with each ORT preset, and
   ORT `quantize_static` QOperator u8s8 (per-channel MinMax), with and without reduce_range, on
   the same fp32 ONNX and calibration images. Each file is profiled in ONNX Runtime
   (`enable_profiling`, 1 thread, --profile-runs interleaved runs): the nodes it executes, in
   order, with their median kernel time, side by side.
2. Run-to-run spread. --repeats fresh processes, each opening new sessions (what the suite times:
   `edgecnn.runtimes.open_session`, 1 thread) and running --rounds interleaved rounds after a
   warmup; per repeat, `suite.paired_latency` of each peer against each edgecnn file (median of
   peer/edgecnn time over rounds and its bootstrap interval); over repeats, the median of those
   ratios and how many repeats' intervals lie wholly above or below 1.

Writes --out (JSON) and the Markdown beside it. Time it on a quiet machine in a raised autogroup:

    echo -19 > /proc/self/autogroup; PYTHONPATH=. python benchmarks/ort_peer_latency.py --model resnet18 \
        --out benchmarks/results/ort_peer_latency_resnet18.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

EDGECNN = ("onnxruntime", "onnxruntime-integer")
PEERS = {"ORT QOperator u8s8": ("QOperator", "u8", "s8", False),
         "ORT QOperator u8s8 reduce_range": ("QOperator", "u8", "s8", True)}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_files(args, work: Path) -> tuple[dict[str, Path], dict]:
    """The model's edgecnn (per lowering preset) and peer int8 ONNX files; label -> path."""
    import suite
    from ort_saturation import ptq
    from quantize_224 import CAL, build_model, load_data
    from suite import SuiteConfig

    cfg = SuiteConfig()
    data224 = load_data(224, cfg)
    model, info = build_model(args, cfg, data224)
    example = data224.example_input(1)
    files: dict[str, Path] = {}
    raw = suite.export_onnx(ptq(model, data224), example, work / "edgecnn_int8.onnx", "int8")
    for preset_name in EDGECNN:
        files[f"edgecnn '{preset_name}'"] = suite.lowered_onnx(raw, work / f"edgecnn_{preset_name}.onnx", preset_name)[0]
    fp32 = suite.export_onnx(model, example, work / "fp32.onnx", "fp32")
    x_cal = data224.tensors("calibration", CAL)[0].numpy()
    for label, config in PEERS.items():
        files[label] = suite.ort_quantize_static(fp32, x_cal, work, config)
    np.save(work / "x1.npy", data224.tensors("test", 1)[0].numpy())
    return files, info


def profile(files: dict[str, Path], x1: np.ndarray, runs: int, warmup: int, work: Path) -> dict[str, dict]:
    """Per-node kernel time of each file, all profiled in one interleaved loop."""
    from prune_profile import _OrtProfiled

    prof = {k: _OrtProfiled(str(p), work, f"prof{i}") for i, (k, p) in enumerate(files.items())}
    keys = list(prof)
    for i in range(runs + warmup):
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:
            prof[k].run(x1, i >= warmup)
    out = {}
    for k, p in prof.items():
        r = p.result(warmup)
        out[k] = {"wall_ms": r["wall_ms"], "nodes_sum_ms": r["nodes_sum_ms_per_run"],
                  "outside_nodes_ms": r["outside_nodes_ms"], "runs": r["runs"],
                  "nodes": [{"op": n["op"], "ms": n["ms"]} for n in r["nodes"]]}
    return out


def time_once(files: dict[str, Path], x1: np.ndarray, rounds: int, warmup: int) -> dict:
    """One repeat (run in its own process): fresh sessions, `rounds` interleaved rounds."""
    import suite

    rows = [suite.Row(k, k, "edgecnn" if k.startswith("edgecnn") else "peer", "onnxruntime", "int8",
                      suite.session_opener(p, "onnxruntime")) for k, p in files.items()]
    samples: dict[str, list[float]] = {}
    med = suite.latency(rows, x1, 1, rounds, warmup, log, samples=samples)
    pairs = {f"{p} / {e}": suite.paired_latency(samples[e], samples[p])
             for e in files if e.startswith("edgecnn") for p in files if not p.startswith("edgecnn")}
    return {"p50_ms": med, "pairs": pairs}


def summarize(repeats: list[dict]) -> dict:
    out = {}
    for pair in repeats[0]["pairs"]:
        rs = [r["pairs"][pair] for r in repeats]
        ratios = [r["ratio_median"] for r in rs]
        out[pair] = {"ratio_median_over_repeats": round(float(np.median(ratios)), 3),
                     "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "repeats_peer_slower": sum(r["ci95"][0] > 1 for r in rs),    # interval wholly above 1
                     "repeats_edgecnn_slower": sum(r["ci95"][1] < 1 for r in rs),
                     "repeats_undecided": sum(r["ci95"][0] <= 1 <= r["ci95"][1] for r in rs)}
    return out


def markdown(res: dict) -> str:
    from run import cpu_line

    lines = [f"Measured by `{res['command']}` (git {res['git']}, {res['seconds']:.0f} s; load average "
             f"{res['loadavg_start']} -> {res['loadavg_end']}; {cpu_line(res['cpu'])}).", "",
             f"{res['model']}, batch 1, 1 thread. Files: edgecnn PTQ (QuantizeConfig defaults, {res['calibration_images']} "
             "calibration images) exported as QDQ ONNX and lowered with each preset; ORT `quantize_static` "
             "QOperator u8s8, per-channel MinMax, on the same fp32 ONNX and calibration images.", "",
             f"## Kernels (ORT profile, {res['profile_runs']} interleaved runs, median per node)", ""]
    prof = res["profile"]
    keys = list(prof)
    lines += ["| | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for what in ("wall_ms", "nodes_sum_ms", "outside_nodes_ms"):
        lines.append(f"| {what.replace('_', ' ')} | " + " | ".join(f"{prof[k][what]:.3f}" for k in keys) + " |")
    lines.append("| nodes | " + " | ".join(str(len(prof[k]["nodes"])) for k in keys) + " |")
    for op in sorted({n["op"] for k in keys for n in prof[k]["nodes"]}):
        lines.append(f"| {op} | " + " | ".join(
            f"{sum(1 for n in prof[k]['nodes'] if n['op'] == op)} x, "
            f"{sum(n['ms'] for n in prof[k]['nodes'] if n['op'] == op):.3f} ms" for k in keys) + " |")
    lines += ["", "Nodes in execution order (op, median ms):", "",
              "| # | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for i in range(max(len(prof[k]["nodes"]) for k in keys)):
        cells = [f"{prof[k]['nodes'][i]['op']} {prof[k]['nodes'][i]['ms']:.4f}" if i < len(prof[k]["nodes"]) else ""
                 for k in keys]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    lines += ["", f"## Run to run: {len(res['repeats'])} fresh processes x {res['rounds']} interleaved rounds", "",
              "Per repeat, median over rounds of peer time / edgecnn time (above 1: edgecnn faster) and its 95% "
              "bootstrap interval:", "",
              "| repeat | " + " | ".join(res["summary"]) + " |", "|---|" + "---|" * len(res["summary"])]
    for i, rep in enumerate(res["repeats"]):
        lines.append(f"| {i} | " + " | ".join(
            f"{rep['pairs'][p]['ratio_median']:.3f} ({rep['pairs'][p]['ci95'][0]:.3f}-{rep['pairs'][p]['ci95'][1]:.3f})"
            for p in res["summary"]) + " |")
    p50 = {k: float(np.median([r["p50_ms"][k] for r in res["repeats"]])) for k in res["repeats"][0]["p50_ms"]}
    lines += ["", "Median over repeats of each file's median ms: " + "; ".join(f"{k} {v:.3f}" for k, v in p50.items()) + ".",
              "", "| over repeats | median ratio | min | max | interval above 1 | below 1 | holds 1 |",
              "|---|---|---|---|---|---|---|"]
    for p, s in res["summary"].items():
        lines.append(f"| {p} | {s['ratio_median_over_repeats']:.3f} | {s['ratio_min']:.3f} | {s['ratio_max']:.3f} | "
                     f"{s['repeats_peer_slower']} | {s['repeats_edgecnn_slower']} | {s['repeats_undecided']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("resnet18", "mobilenet_v2"), default="resnet18")
    ap.add_argument("--load-model", help="state dict of the 224-px model (skips training)")
    ap.add_argument("--save-model", help="write the trained 224-px model's state dict here")
    ap.add_argument("--repeats", type=int, default=20, help="fresh timing processes (default 20)")
    ap.add_argument("--rounds", type=int, default=200, help="interleaved rounds per repeat (default 200)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--profile-runs", type=int, default=100)
    ap.add_argument("--out", required=True)
    ap.add_argument("--time-once", nargs=2, metavar=("FILES_JSON", "X1_NPY"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.time_once:   # child: one repeat
        files = {k: Path(v) for k, v in json.loads(Path(args.time_once[0]).read_text()).items()}
        print(json.dumps(time_once(files, np.load(args.time_once[1]), args.rounds, args.warmup)))
        return

    from quantize_224 import CAL
    from run import cpu, git, loadavg, versions, write_results

    t0 = time.perf_counter()
    res = {"command": "PYTHONPATH=. python " + " ".join(sys.argv), "git": git()["commit"][:12], "versions": versions(),
           "cpu": cpu(), "loadavg_start": loadavg(), "model": f"torchvision {args.model}, suite 224 mode (seed 0)",
           "calibration_images": CAL, "rounds": args.rounds, "profile_runs": args.profile_runs}
    with tempfile.TemporaryDirectory(prefix="ort_peer_") as tmp:
        work = Path(tmp)
        log(f"building {args.model} and its int8 files")
        files, res["model_info"] = build_files(args, work)
        x1 = np.load(work / "x1.npy")
        log("profiling")
        res["profile"] = profile(files, x1, args.profile_runs, 10, work)
        (work / "files.json").write_text(json.dumps({k: str(v) for k, v in files.items()}))
        res["repeats"] = []
        for i in range(args.repeats):
            out = subprocess.run([sys.executable, __file__, "--time-once", str(work / "files.json"), str(work / "x1.npy"),
                                  "--rounds", str(args.rounds), "--warmup", str(args.warmup), "--out", "-"],
                                 check=True, capture_output=True, text=True)
            res["repeats"].append(json.loads(out.stdout.strip().splitlines()[-1]))
            log(f"repeat {i}: " + "; ".join(f"{p} {v['ratio_median']:.3f}" for p, v in res["repeats"][-1]["pairs"].items()))
    res["summary"] = summarize(res["repeats"])
    write_results(res, args.out, markdown, t0)


if __name__ == "__main__":
    main()
