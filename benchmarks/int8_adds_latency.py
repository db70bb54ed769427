"""Latency of edgecnn's int8 artifacts with residual adds float (litert's annotation under torch
2.14's export) and quantized (`QuantizeConfig.int8_adds`, the default), side by side in one run.

Same 224-px models as `quantize_224.py` (trained at 32 px on mnist5k, adapted to 224 px as the
suite does; `--load-model` reuses a state_dict it saved), same 128 calibration images. Per model
and setting, the two artifacts the exporters write by default: the QDQ ONNX lowered for
'onnxruntime' (exact) in ONNX Runtime, and the unlowered OpenVINO IR at the CPU's default
precision. All four sessions of a model are timed at 1 thread, batch 1, run by run in rotating
order (a load change hits each alike); medians. Also recorded: the ops ONNX Runtime runs after
its optimizer and the layer precisions OpenVINO executes.

    echo -19 > /proc/self/autogroup   # as root, in the shell that starts it
    PYTHONPATH=. python benchmarks/int8_adds_latency.py \\
        --load-model resnet18=/tmp/q224/resnet18_224.pt --load-model mobilenet_v2=/tmp/q224/mnv2_224.pt \\
        --out benchmarks/results/int8_adds_latency.json
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import quantize_224  # noqa: E402
import suite  # noqa: E402
from run import git, loadavg, scheduling, write_results  # noqa: E402
from suite import SuiteConfig  # noqa: E402

CAL = quantize_224.CAL
SETTINGS = {"adds float (before)": {"int8_adds": False}, "adds int8 (default)": {}}


def log(msg: str) -> None:
    print(msg, flush=True)


def artifacts(model, data, fields: dict, work: Path, tag: str) -> dict[str, str]:
    from edgecnn.compress.calibration import load_calibration

    Q = importlib.import_module("edgecnn.compress.quantize")
    calib = load_calibration(data, CAL, None, batch_size=32)
    cfg = Q.QuantizeConfig(calibration_samples=CAL, calibration_batch_size=32, **{"observer": "histogram", **fields})
    qm = Q._mark_eval(Q._ptq(Q.export_graph(model, calib.batches[0]), cfg, calib.batches))
    raw = suite.export_onnx(qm, data.example_input(1), work / f"{tag}.onnx", "int8")
    ort_path, _ = suite.lowered_onnx(raw, work / f"{tag}_ort.onnx", "onnxruntime")
    return {"onnxruntime": str(ort_path), "openvino": str(suite.onnx_to_ir(raw, work / f"{tag}.xml"))}


def time_rotating(sessions: dict, x: np.ndarray, runs: int, warmup: int) -> dict[str, dict]:
    for s in sessions.values():
        for _ in range(warmup):
            s.run(x)
    keys = list(sessions)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for i in range(runs):
        k0 = i % len(keys)
        for k in keys[k0:] + keys[:k0]:
            t = time.perf_counter()
            sessions[k].run(x)
            times[k].append(time.perf_counter() - t)
    return {k: {"p50_ms": round(1e3 * statistics.median(v), 4),
                "p10_ms": round(1e3 * float(np.percentile(v, 10)), 4),
                "p90_ms": round(1e3 * float(np.percentile(v, 90)), 4)} for k, v in times.items()}


def one_model(name: str, load: str | None, runs: int, warmup: int) -> dict:
    from edgecnn.export.lowering import openvino_precisions, ort_fused_ops
    from edgecnn.runtimes import open_session

    cfg = SuiteConfig()
    data = quantize_224.load_data(224, cfg)
    model, info = quantize_224.build_model(SimpleNamespace(model=name, load_model=load, save_model=None), cfg, data)
    x = data.tensors("test", 1)[0].numpy()
    out: dict = {"model_info": info, "settings": {}}
    with tempfile.TemporaryDirectory(prefix="adds_") as tmp:
        files = {}
        for label, fields in SETTINGS.items():
            files[label] = artifacts(model, data, fields, Path(tmp), label.split()[1])
            out["settings"][label] = {"config": fields,
                                      "onnxruntime_ops": ort_fused_ops(files[label]["onnxruntime"]),
                                      "openvino_precisions": openvino_precisions(files[label]["openvino"])}
        sessions = {f"{rt}/{label}": open_session(path, rt, threads=1)
                    for label, fs in files.items() for rt, path in fs.items()}
        lat = time_rotating(sessions, x, runs, warmup)
    for label in SETTINGS:
        for rt in ("onnxruntime", "openvino"):
            out["settings"][label][rt] = lat[f"{rt}/{label}"]
    before, after = SETTINGS
    out["speedup"] = {rt: round(lat[f"{rt}/{before}"]["p50_ms"] / lat[f"{rt}/{after}"]["p50_ms"], 3)
                      for rt in ("onnxruntime", "openvino")}
    log(f"  {name}: {out['speedup']}")
    return out


def markdown(res: dict) -> str:
    commit = res["git"]["commit"][:7] + (" + uncommitted changes" if res["git"]["dirty_files"] else "")
    lines = [f"Measured by `{res['command']}` at `{commit}` ({res['seconds']:.0f} s; load average "
             f"{res['loadavg_start']} at the start, {res['loadavg_end']} at the end; scheduling "
             f"{res['scheduling']}).", "",
             f"1 thread, batch 1, {res['runs']} runs of each session in rotating order, medians (p10-p90).", "",
             "| model | residual adds | ONNX Runtime ('onnxruntime' lowering) ms | ops ORT runs | OpenVINO IR "
             "(unlowered) ms | precisions OpenVINO executes |", "|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        for label, s in m["settings"].items():
            o, v = s["onnxruntime"], s["openvino"]
            lines.append(f"| {name} | {label} | {o['p50_ms']:.3f} ({o['p10_ms']:.3f}-{o['p90_ms']:.3f}) | "
                         f"{s['onnxruntime_ops']} | {v['p50_ms']:.3f} ({v['p10_ms']:.3f}-{v['p90_ms']:.3f}) | "
                         f"{s['openvino_precisions']} |")
        lines.append(f"| {name} | speedup (before / default) | {m['speedup']['onnxruntime']}x | | "
                     f"{m['speedup']['openvino']}x | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"], choices=("resnet18", "mobilenet_v2"))
    ap.add_argument("--load-model", action="append", default=[], metavar="NAME=PATH",
                    help="a 224-px state_dict saved by quantize_224.py --save-model (else trained here)")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "int8_adds_latency.json"))
    args = ap.parse_args()
    loads = dict(s.split("=", 1) for s in args.load_model)
    t0 = time.perf_counter()
    res = {"command": "PYTHONPATH=. python " + " ".join(sys.argv), "git": git(), "scheduling": scheduling(),
           "loadavg_start": loadavg(), "runs": args.runs, "models": {}}
    for name in args.models:
        log(name)
        res["models"][name] = one_model(name, loads.get(name), args.runs, args.warmup)
    write_results(res, args.out, markdown, t0)


if __name__ == "__main__":
    main()
