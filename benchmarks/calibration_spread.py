"""How much of an int8 accuracy gap is the calibration draw: edgecnn PTQ against ORT quantize_static
on the suite's 224-px model, over several calibration sets of the same size.

The suite compares one edgecnn artifact with one ORT `quantize_static` artifact, both calibrated on
the same 128 images. On a model whose int8 top-1 swings by points with the calibration images, one
draw says little about which method is better. This script repeats the comparison on `--draws`
calibration sets (each `--cal` images drawn from the training split with its own seed; draw 0 is
the suite's own calibration split), scores every artifact on the same `--test` test images in its
runtime, and reports per method the mean, min and max of top-1 and of agreement with the float
model's top-1, and per draw the paired difference edgecnn - peer.

Methods (`--methods`; default all):
- `edgecnn[:observer]`: edgecnn PTQ (QuantizeConfig defaults, the named activation observer),
  exported to QDQ ONNX, lowered for 'onnxruntime-integer' (the suite's fastest), run in ONNX Runtime;
- `ort-qop-u8s8-rr`, `ort-qop-u8s8`, `ort-qdq-u8s8`, `ort-qop-u8u8`: ORT `quantize_static` (per-channel, MinMax)
  on the fp32 ONNX, run in ONNX Runtime; `nncf-mixed`: NNCF on the fp32 ONNX, run in OpenVINO.

    PYTHONPATH=. python benchmarks/calibration_spread.py --model mobilenet_v2 \
        --load-model /tmp/mnv2_224.pt --draws 5 --test 1000 --out benchmarks/results/calibration_spread_mobilenet_v2.json

The model is built as `benchmarks/quantize_224.py` builds it (`--load-model` takes its `--save-model`
output; without it the model is trained and adapted first, minutes).
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite  # noqa: E402
from quantize_224 import build_model, load_data, run_file, run_torch, top1_agree  # noqa: E402
from suite import SuiteConfig  # noqa: E402

ORT_CONFIGS = {"ort-qop-u8s8-rr": ("QOperator", "u8", "s8", True), "ort-qop-u8s8": ("QOperator", "u8", "s8", False),
               "ort-qdq-u8s8": ("QDQ", "u8", "s8", False), "ort-qop-u8u8": ("QOperator", "u8", "u8", False)}
DEFAULT_METHODS = ("edgecnn", "edgecnn:minmax", "edgecnn:percentile", *ORT_CONFIGS, "nncf-mixed")


def log(msg: str) -> None:
    print(msg, flush=True)


def calibration_draw(data, draw: int, n: int) -> torch.Tensor:
    """Draw 0: the suite's calibration split; draw k > 0: n training images chosen with seed k."""
    if draw == 0:
        return data.tensors("calibration", n)[0]
    xt, _ = data.tensors("train")
    idx = np.random.default_rng(draw).permutation(len(xt))[:n]
    return xt[torch.as_tensor(idx)]


def edgecnn_artifact(model, x_cal: torch.Tensor, observer: str | None, example, path: Path) -> Path:
    Q = importlib.import_module("edgecnn.compress.quantize")   # the module, not the function
    fields = {"observer": observer} if observer else {}
    qcfg = Q.QuantizeConfig(calibration_samples=len(x_cal), calibration_batch_size=32, **fields)
    batches = list(x_cal.split(32))
    qm = Q._mark_eval(Q._ptq(Q.export_graph(model, batches[0]), qcfg, batches))
    raw = suite.export_onnx(qm, example, path, "int8")
    lowered, _ = suite.lowered_onnx(raw, path.with_name(path.stem + "_ort_integer.onnx"), "onnxruntime-integer")
    return lowered


def method_artifact(method: str, model, fp32: Path, x_cal: torch.Tensor, example, work: Path) -> tuple[Path, str]:
    if method.startswith("edgecnn"):
        observer = method.partition(":")[2] or None
        return edgecnn_artifact(model, x_cal, observer, example, work / f"{method.replace(':', '_')}.onnx"), "onnxruntime"
    if method in ORT_CONFIGS:
        return suite.ort_quantize_static(fp32, x_cal.numpy(), work, ORT_CONFIGS[method]), "onnxruntime"
    if method == "nncf-mixed":
        return suite.nncf_quantize(fp32, x_cal.numpy(), work / "nncf_mixed.xml", "mixed"), "openvino"
    raise SystemExit(f"--methods: unknown method '{method}' (one of {', '.join(DEFAULT_METHODS)})")


def summarize(per_draw: list[dict], methods: list[str]) -> dict:
    out = {}
    for m in methods:
        t = [d[m]["top1"] for d in per_draw]
        a = [d[m]["agree"] for d in per_draw]
        out[m] = {"top1_mean": round(statistics.fmean(t), 2), "top1_min": min(t), "top1_max": max(t),
                  "agree_mean": round(statistics.fmean(a), 2), "agree_min": min(a), "agree_max": max(a)}
    return out


def markdown(res: dict) -> str:
    methods = res["methods"]
    lines = [f"Measured by `{res['command']}` ({res['seconds']:.0f} s, git {res['git']}).", "",
             f"{res['model']}; {res['draws']} calibration draws of {res['calibration_images']} images (draw 0: the "
             f"suite's calibration split; draw k: training images chosen with seed k); every artifact scored in its "
             f"runtime on the first {res['test_images']} test images. Float top-1 {res['float']['top1']:.2f}. "
             "Cells: top-1 % (agreement % with the float model's top-1).", "",
             "| draw | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for i, d in enumerate(res["per_draw"]):
        lines.append(f"| {i} | " + " | ".join(f"{d[m]['top1']:.2f} ({d[m]['agree']:.1f})" for m in methods) + " |")
    s = res["summary"]
    lines.append("| mean | " + " | ".join(f"**{s[m]['top1_mean']:.2f}** ({s[m]['agree_mean']:.1f})" for m in methods) + " |")
    lines.append("| min-max top-1 | " + " | ".join(f"{s[m]['top1_min']:.2f}-{s[m]['top1_max']:.2f}" for m in methods) + " |")
    lines.append("| min-max agreement | " + " | ".join(f"{s[m]['agree_min']:.1f}-{s[m]['agree_max']:.1f}" for m in methods) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("mobilenet_v2", "resnet18"), default="mobilenet_v2")
    ap.add_argument("--load-model", help="state_dict of the adapted 224-px model (quantize_224.py --save-model)")
    ap.add_argument("--save-model", help="write the adapted model's state_dict here")
    ap.add_argument("--draws", type=int, default=5, help="calibration sets (default 5)")
    ap.add_argument("--cal", type=int, default=128, help="images per calibration set (default 128, the suite's at 224)")
    ap.add_argument("--test", type=int, default=1000, help="test images scored (default 1000)")
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = SuiteConfig()
    t0 = time.perf_counter()
    data = load_data(224, cfg)
    model, model_info = build_model(args, cfg, data)
    x, y = data.tensors("test", args.test)
    y = y.numpy()
    ref = run_torch(model, x)
    res = {"command": "PYTHONPATH=. python " + " ".join(sys.argv), "git": suite_git(), "model": f"torchvision {args.model}, suite 224 mode",
           "model_info": model_info, "calibration_images": args.cal, "draws": args.draws, "test_images": len(y),
           "methods": args.methods, "float": top1_agree(ref, y, ref), "per_draw": []}
    log(f"float top-1 {res['float']['top1']}% on {len(y)} test images")
    example = data.example_input(1)
    with tempfile.TemporaryDirectory(prefix="calspread_") as tmp:
        work = Path(tmp)
        fp32 = suite.export_onnx(model, example, work / "fp32.onnx", "fp32")
        for draw in range(args.draws):
            x_cal = calibration_draw(data, draw, args.cal)
            row = {}
            for m in args.methods:
                d = work / f"draw{draw}"
                d.mkdir(exist_ok=True)
                path, runtime = method_artifact(m, model, fp32, x_cal, example, d)
                row[m] = top1_agree(run_file(path, runtime, x.numpy()), y, ref)
                log(f"draw {draw} {m}: {row[m]}")
            res["per_draw"].append(row)
    res["summary"] = summarize(res["per_draw"], args.methods)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    from edgecnn.io import write_json, write_text

    write_json(Path(args.out), res)
    log(write_text(Path(args.out).with_suffix(".md"), markdown(res)).read_text())


def suite_git() -> str:
    from run import git

    return git()["commit"][:12]


if __name__ == "__main__":
    main()
