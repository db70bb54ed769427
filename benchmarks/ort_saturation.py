"""ONNX Runtime's u8s8 int8 kernels against the fake-quant graph they come from: where they saturate,
what that costs in accuracy, and what the exact forms cost in latency.

ORT's x64 u8s8 kernels without VNNI add pairs of u8 x s8 products in int16 (`vpmaddubsw`); a pair
over 32,767 saturates. `edgecnn.export.lowering.ort_u8s8_saturates()` probes whether this machine's
ORT does that. On the suite's 224-px model (built as `benchmarks/quantize_224.py` builds it), this
script scores, on the same `--test` test images:

- edgecnn PTQ (QuantizeConfig defaults, 8-bit weights): the fake-quant graph; its QDQ ONNX lowered
  'onnxruntime' (u8s8, the ExportConfig default), 'onnxruntime-integer' and 'onnxruntime-exact'
  (u8 weights: u8 x u8 kernels, no int16 step), each run with ORT's optimizations (fused int8
  kernels) and, for 'onnxruntime', also literally (optimizations off: dequantize, float op, quantize);
- edgecnn PTQ with `weight_bits=7` (weights in [-64, 64], which no u8s8 pair can saturate), lowered
  'onnxruntime';
- ORT `quantize_static` QOperator u8s8 per-channel MinMax, with and without reduce_range (its 7-bit weights).

Per row: top-1, agreement with the float model's top-1, agreement with the row's own fake-quant
graph and the largest logit difference from it; then 1-thread batch-1 latency of every ORT row in
`--runs` interleaved rounds (median, and the median over rounds of 'onnxruntime' time / row time).

    PYTHONPATH=. python benchmarks/ort_saturation.py --model mobilenet_v2 --load-model /tmp/mnv2_224.pt \
        --out benchmarks/results/ort_saturation_mobilenet_v2.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite  # noqa: E402
from quantize_224 import CAL, run_torch, setup  # noqa: E402
from run import git, loadavg, versions, write_results  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


def ort_logits(path: Path, x: np.ndarray, optimize: bool = True) -> np.ndarray:
    from edgecnn.export.lowering import ort_session

    s = ort_session(path, threads=None, optimize=optimize)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 50]})[0] for i in range(0, len(x), 50)])


def scores(logits: np.ndarray, y: np.ndarray, ref: np.ndarray, fq: np.ndarray | None) -> dict:
    out = {"top1": round(100.0 * float((logits.argmax(1) == y).mean()), 2),
           "agree_float": round(100.0 * float((logits.argmax(1) == ref.argmax(1)).mean()), 2)}
    if fq is not None:
        out["agree_fake_quant"] = round(100.0 * float((logits.argmax(1) == fq.argmax(1)).mean()), 2)
        out["max_abs_diff_fake_quant"] = round(float(np.abs(logits - fq).max()), 4)
    return out


def ptq(model, data, weight_bits: int = 8, **fields):
    """edgecnn PTQ (QuantizeConfig defaults and `fields`) on the first CAL calibration images: the
    converted graph of `quantize()`, whose own test evaluation is cut to 32 images."""
    return suite.quantize_edgecnn(model, data, CAL, test_limit=32, weight_bits=weight_bits, **fields).model


def latency(paths: dict[str, Path], x1: np.ndarray, runs: int, warmup: int = 10) -> dict[str, dict]:
    from edgecnn.export.lowering import ort_session

    sess = {k: ort_session(p, threads=1) for k, p in paths.items()}
    names = {k: s.get_inputs()[0].name for k, s in sess.items()}
    for k, s in sess.items():
        for _ in range(warmup):
            s.run(None, {names[k]: x1})
    times: dict[str, list[float]] = {k: [] for k in sess}
    keys = list(sess)
    for i in range(runs):
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:
            t = time.perf_counter()
            sess[k].run(None, {names[k]: x1})
            times[k].append(time.perf_counter() - t)
    base = np.asarray(times[keys[0]])
    return {k: {"p50_ms": round(1e3 * statistics.median(v), 4),
                f"{keys[0]}_over_this": round(float(np.median(base / np.asarray(v))), 3)} for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("mobilenet_v2", "resnet18"), default="mobilenet_v2")
    ap.add_argument("--load-model", help="state_dict of the adapted 224-px model (quantize_224.py --save-model)")
    ap.add_argument("--save-model", help="write the adapted model's state_dict here")
    ap.add_argument("--test", type=int, default=1000, help="test images scored (default 1000, all)")
    ap.add_argument("--runs", type=int, default=200, help="interleaved latency rounds (default 200)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from edgecnn.export.lowering import ort_u8s8_saturates

    t0 = time.perf_counter()
    _, data, model, model_info, xt, yt = setup(args)
    x, y = xt.numpy(), yt.numpy()
    ref = run_torch(model, xt)
    res = {"command": "PYTHONPATH=. python " + " ".join(sys.argv), "git": git()["commit"][:12], "versions": versions(),
           "loadavg_start": loadavg(), "model": f"torchvision {args.model}, suite 224 mode", "model_info": model_info,
           "calibration_images": CAL, "test_images": len(y), "ort_u8s8_saturates": ort_u8s8_saturates(),
           "float": scores(ref, y, ref, None), "rows": {}}
    log(f"float {res['float']}; ORT u8s8 saturates here: {res['ort_u8s8_saturates']}")
    rows, timed = res["rows"], {}
    example = data.example_input(1)
    with tempfile.TemporaryDirectory(prefix="ortsat_") as tmp:
        work = Path(tmp)
        for bits in (8, 7):
            qm = ptq(model, data, bits)
            fq = run_torch(qm, xt)
            rows[f"w{bits} fake-quant"] = scores(fq, y, ref, fq)
            raw = suite.export_onnx(qm, example, work / f"w{bits}.onnx", "int8")
            presets = ("onnxruntime", "onnxruntime-integer", "onnxruntime-exact") if bits == 8 else ("onnxruntime",)
            for p in presets:
                path, _ = suite.lowered_onnx(raw, work / f"w{bits}_{p}.onnx", p)
                key = f"w{bits} ORT '{p}'"
                rows[key] = scores(ort_logits(path, x), y, ref, fq)
                timed[key] = path
                if bits == 8 and p == "onnxruntime":
                    rows[key + " literal"] = scores(ort_logits(path, x, optimize=False), y, ref, fq)
            log(f"  w{bits}: " + "; ".join(f"{k} {v}" for k, v in rows.items() if k.startswith(f"w{bits}")))
        fp32 = suite.export_onnx(model, example, work / "fp32.onnx", "fp32")
        x_cal = data.tensors("calibration", CAL)[0].numpy()
        for rr in (False, True):
            p = suite.ort_quantize_static(fp32, x_cal, work, ("QOperator", "u8", "s8", rr))
            key = f"peer ORT quantize_static QOperator u8s8{' reduce_range' if rr else ''}"
            rows[key] = scores(ort_logits(p, x), y, ref, None)
            timed[key] = p
            log(f"  {key}: {rows[key]}")
        res["latency_1t"] = latency(timed, x[:1], args.runs)
        res["latency_runs"] = args.runs
    write_results(res, args.out, markdown, t0)


def markdown(res: dict) -> str:
    lat = res["latency_1t"]
    first = next(iter(lat))
    lines = [f"Measured by `{res['command']}` (git {res['git']}, {res['seconds']:.0f} s; load average "
             f"{res['loadavg_start']} -> {res['loadavg_end']}).", "",
             f"{res['model']}; {res['calibration_images']} calibration images; {res['test_images']} test images. "
             f"onnxruntime {res['versions'].get('onnxruntime')}: u8s8 kernels saturate on this machine: "
             f"**{res['ort_u8s8_saturates']}** (`ort_u8s8_saturates()`). Float top-1 {res['float']['top1']:.2f}.", "",
             "| row | top-1 % | agrees with float % | agrees with own fake-quant % | max logit diff from it "
             f"| p50 1T ms | {first} / row (median of {res['latency_runs']} rounds) |", "|---|---|---|---|---|---|---|"]
    for k, r in res["rows"].items():
        t = lat.get(k, {})
        lines.append(f"| {k} | {r['top1']:.2f} | {r['agree_float']:.2f} | {r.get('agree_fake_quant', '')} | "
                     f"{r.get('max_abs_diff_fake_quant', '')} | {t.get('p50_ms', '')} | "
                     f"{t.get(f'{first}_over_this', '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
