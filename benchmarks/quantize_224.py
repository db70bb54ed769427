"""edgecnn int8 PTQ on the suite's 224-px mobilenet_v2 or resnet18: fake-quant, ONNX Runtime and
OpenVINO artifacts, against NNCF and ORT quantize_static, before and after an annotation fix.

The model is one `benchmarks/run.py` measures in its 224 mode: torchvision mobilenet_v2 (or
resnet18, `--model`) trained on mnist5k at 32 px x 3 channels (`suite.train`, SuiteConfig defaults), adapted to 224 px with
`suite.adapt_224`; calibration: the first 128 images of the data's calibration split (what
`suite.quantize_edgecnn(model, data, 128)` and the peers use); scored on the first `--test` test
images. Rows:

- edgecnn PTQ with `QuantizeConfig` defaults except the field a row names (`--fix`): with
  `--fix relu6` (default) the row before is `clamped_outputs=False` (litert's annotation: conv
  output observed before ReLU6); with `--fix adds` it is `int8_adds=False` (adds left float);
- its exports: QDQ ONNX lowered for 'onnxruntime' (ExportConfig default) and for
  'onnxruntime-integer' (the suite's fastest) in ONNX Runtime; the
  'openvino'-lowered IR in OpenVINO at its default precision (bf16 on CPUs with AVX512-BF16) and at
  f32; the unlowered IR (ExportConfig's default openvino_lowering: null) at the default precision;
- peers on the fp32 ONNX, same calibration images: NNCF presets performance and mixed, ORT QDQ u8u8
  MinMax per-channel and ORT QOperator u8s8 reduce_range (the suite's most accurate ORT row at 224).

    PYTHONPATH=. python benchmarks/quantize_224.py --save-model /tmp/mnv2_224.pt \
        --out benchmarks/results/quantize_224.json
    PYTHONPATH=. python benchmarks/quantize_224.py --load-model /tmp/mnv2_224.pt ...   # skip training
    PYTHONPATH=. python benchmarks/quantize_224.py --model resnet18 --fix adds --test 1000 \
        --out benchmarks/results/quantize_224_adds_resnet18.json

Training (32 px) + adapting takes minutes on 2 cores; each PTQ about a minute.
"""
from __future__ import annotations

import argparse
import importlib
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
from run import write_results  # noqa: E402
from suite import SuiteConfig  # noqa: E402

CAL = 128
FIXES = {"relu6": {"clamped_outputs": False}, "adds": {"int8_adds": False}}


def log(msg: str) -> None:
    print(msg, flush=True)


def load_data(size: int, cfg: SuiteConfig):
    from edgecnn.data import DataConfig, load_data as load

    cal = cfg.calibration if size != 224 else cfg.calibration_224
    return load(DataConfig(source="mnist5k", image_size=size, channels=3, calibration_size=cal), cfg.seed)


def build_model(args, cfg: SuiteConfig, data224):
    from edgecnn.io import atomic_path
    from edgecnn.models import ModelConfig, build_model as build

    model = build(ModelConfig(source=f"torchvision:{args.model}"), data224.num_classes, 3)
    if args.load_model:
        model.load_state_dict(torch.load(args.load_model, map_location="cpu", weights_only=True))
        return model.eval(), {"loaded": str(args.load_model)}
    t = time.perf_counter()
    trained = suite.train(args.model, load_data(cfg.size, cfg), cfg, log)
    model, info = suite.adapt_224(trained, data224, cfg, log, args.model, measure=True)
    info["train_and_adapt_seconds"] = round(time.perf_counter() - t, 1)
    if args.save_model:
        with atomic_path(Path(args.save_model), suffix=".pt") as tmp:
            torch.save(model.state_dict(), tmp)
    return model.eval(), info


def setup(args):
    """Seeded: the suite config, the 224-px data, the adapted model (`args.model`, `--load-model` /
    `--save-model`) and the first `args.test` test images."""
    torch.manual_seed(0)
    cfg = SuiteConfig()
    data = load_data(224, cfg)
    model, model_info = build_model(args, cfg, data)
    xt, yt = data.tensors("test", args.test)
    return cfg, data, model, model_info, xt, yt


def top1_agree(logits: np.ndarray, y: np.ndarray, ref: np.ndarray) -> dict:
    return {"top1": round(100.0 * float((logits.argmax(1) == y).mean()), 2),
            "agree": round(100.0 * float((logits.argmax(1) == ref.argmax(1)).mean()), 2)}


def run_torch(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(x[i:i + 50]) for i in range(0, len(x), 50)]).numpy()


def run_file(path: Path, runtime: str, x: np.ndarray, **options) -> np.ndarray:
    from edgecnn.runtimes import open_session

    run = open_session(str(path), runtime, threads=None, **options).run
    return np.concatenate([run(x[i:i + 50]) for i in range(0, len(x), 50)])


def clamp_ranges(qm) -> dict:
    """int8 ranges [lo, hi] of the quantize nodes reading a ReLU6 (hardtanh) or the global pool's output."""
    import statistics

    def rng(n):
        s, z = float(n.args[1]), int(n.args[2])
        return round(s * (-128 - z), 3), round(s * (127 - z), 3)

    clamp, pool = [], None
    for n in qm.graph.nodes:
        if "quantize_per_tensor" in str(n.target) and "dequantize" not in str(n.target):
            src = str(getattr(n.args[0], "target", ""))
            if "hardtanh" in src:
                clamp.append(rng(n))
            elif "adaptive_avg_pool2d" in src or "mean" in src:
                pool = rng(n)
    if not clamp:
        return {}
    return {"relu6_outputs": len(clamp), "lo_min": min(r[0] for r in clamp), "lo_max": max(r[0] for r in clamp),
            "hi_min": min(r[1] for r in clamp), "hi_max": max(r[1] for r in clamp),
            "width_over_6_median": round(statistics.median((r[1] - r[0]) / 6 for r in clamp), 2),
            "global_pool": pool}


def edgecnn_rows(name: str, model, data, cfg_fields: dict, x, y, ref, work: Path, artifacts: bool) -> dict:
    from edgecnn.compress.calibration import load_calibration

    Q = importlib.import_module("edgecnn.compress.quantize")   # the module (edgecnn.compress.quantize is also a function)
    # one observer per row (histogram unless cfg_fields names one): 'auto' is a choice quantize() makes
    qcfg = Q.QuantizeConfig(calibration_samples=CAL, calibration_batch_size=32, **{"observer": "histogram", **cfg_fields})
    calib = load_calibration(data, CAL, None, batch_size=32)
    t = time.perf_counter()
    graph = Q.export_graph(model, calib.batches[0])
    qm = Q._mark_eval(Q._ptq(graph, qcfg, calib.batches))
    out = {"config": cfg_fields, "ptq_seconds": round(time.perf_counter() - t, 1)}
    out["clamp_ranges"] = clamp_ranges(qm)
    out["fake_quant"] = top1_agree(run_torch(qm, x), y, ref)
    log(f"  {name}: fake-quant {out['fake_quant']}")
    if not artifacts:
        return out
    example = data.example_input(1)
    raw = suite.export_onnx(qm, example, work / f"{name}.onnx", "int8")
    ort_path, _ = suite.lowered_onnx(raw, work / f"{name}_onnxruntime.onnx", "onnxruntime")
    out["onnxruntime"] = top1_agree(run_file(ort_path, "onnxruntime", x.numpy()), y, ref)
    ort_int, passes = suite.lowered_onnx(raw, work / f"{name}_onnxruntime_integer.onnx", "onnxruntime-integer")
    out["onnxruntime_integer"] = top1_agree(run_file(ort_int, "onnxruntime", x.numpy()), y, ref)
    out["onnxruntime_integer_passes"] = passes
    xml_raw = suite.onnx_to_ir(raw, work / f"{name}.xml")   # ExportConfig's default IR: no lowering
    out["openvino_ir_unlowered"] = top1_agree(run_file(xml_raw, "openvino", x.numpy()), y, ref)
    ov_onnx, _ = suite.lowered_onnx(raw, work / f"{name}_openvino.onnx", "openvino")
    xml = suite.onnx_to_ir(ov_onnx, work / f"{name}_openvino.xml")
    out["openvino_ir"] = top1_agree(run_file(xml, "openvino", x.numpy()), y, ref)
    out["openvino_ir_f32"] = top1_agree(run_file(xml, "openvino", x.numpy(), inference_precision="f32"), y, ref)
    log(f"  {name}: ORT {out['onnxruntime']}, ORT integer {out['onnxruntime_integer']}, IR {out['openvino_ir']}, IR f32 {out['openvino_ir_f32']}, "
        f"IR unlowered {out['openvino_ir_unlowered']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("mobilenet_v2", "resnet18"), default="mobilenet_v2")
    ap.add_argument("--fix", choices=tuple(FIXES), default="relu6",
                    help="the annotation fix compared: its row before is the default with it turned off")
    ap.add_argument("--load-model", help="state_dict of the adapted 224-px model (written by --save-model)")
    ap.add_argument("--save-model", help="write the adapted model's state_dict here")
    ap.add_argument("--test", type=int, default=300, help="test images scored (default 300)")
    ap.add_argument("--no-peers", dest="peers", action="store_false", help="skip NNCF and ORT quantize_static")
    ap.add_argument("--variants", action="store_true",
                    help="also fake-quant rows without bias correction and with the minmax observer")
    ap.add_argument("--observers", nargs="+", default=[], metavar="NAME",
                    help="also fake-quant rows with each activation observer (QuantizeConfig.observer)")
    ap.add_argument("--no-fix-rows", dest="fix_rows", action="store_false",
                    help="skip the before/after rows of --fix (and their artifacts)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quantize_224.json"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    cfg, data, model, model_info, xt, yt = setup(args)
    x, y = xt, yt.numpy()
    ref = run_torch(model, x)
    res = {"command": "PYTHONPATH=. python " + " ".join(sys.argv), "model": f"torchvision {args.model}, suite 224 mode",
           "model_info": model_info, "calibration_images": CAL, "test_images": len(y),
           "float": top1_agree(ref, y, ref), "edgecnn": {}, "peers": {}}
    log(f"float top-1 {res['float']['top1']}% on {len(y)} test images")
    with tempfile.TemporaryDirectory(prefix="q224_") as tmp:
        work = Path(tmp)
        before = FIXES[args.fix]
        rows = [("before_fix", before, True), ("default", {}, True)] if args.fix_rows else []
        rows += [(f"observer_{o}", {"observer": o}, False) for o in args.observers]
        if args.variants:
            rows += [("before_fix_no_bias_correction", {**before, "bias_correction": False}, False),
                     ("default_no_bias_correction", {"bias_correction": False}, False),
                     ("default_minmax", {"observer": "minmax"}, False)]
        for name, fields, artifacts in rows:
            res["edgecnn"][name] = edgecnn_rows(name, model, data, fields, x, y, ref, work, artifacts)
        if args.peers:
            fp32 = suite.export_onnx(model, data.example_input(1), work / "fp32.onnx", "fp32")
            x_cal = data.tensors("calibration", CAL)[0].numpy()
            xml = suite.nncf_quantize(fp32, x_cal, work / "nncf_performance.xml", "performance")
            res["peers"]["nncf_performance"] = top1_agree(run_file(xml, "openvino", x.numpy()), y, ref)
            xml = suite.nncf_quantize(fp32, x_cal, work / "nncf_mixed.xml", "mixed")
            res["peers"]["nncf_mixed"] = top1_agree(run_file(xml, "openvino", x.numpy()), y, ref)
            p = suite.ort_quantize_static(fp32, x_cal, work, ("QDQ", "u8", "u8", False))
            res["peers"]["ort_qdq_u8u8_minmax"] = top1_agree(run_file(p, "onnxruntime", x.numpy()), y, ref)
            p = suite.ort_quantize_static(fp32, x_cal, work, ("QOperator", "u8", "s8", True))
            res["peers"]["ort_qoperator_u8s8_reduce_range"] = top1_agree(run_file(p, "onnxruntime", x.numpy()), y, ref)
            log(f"  peers: {res['peers']}")
    write_results(res, args.out, markdown, t0)


def markdown(res: dict) -> str:
    cell = lambda r: f"{r['top1']:.2f} ({r['agree']:.1f})" if r else ""   # noqa: E731
    lines = [f"Measured by `{res['command']}` ({res['seconds']:.0f} s).", "",
             f"{res['model']}; {res['calibration_images']} calibration images; top-1 % on the first "
             f"{res['test_images']} test images (agreement % with the float model's top-1 in brackets). "
             f"Float: {res['float']['top1']:.2f}.", "",
             "| edgecnn PTQ | fake-quant | ONNX Runtime (lowering 'onnxruntime') | ONNX Runtime (lowering "
             "'onnxruntime-integer') | OpenVINO IR (lowering 'openvino') "
             "| same IR, f32 inference precision | OpenVINO IR, no lowering (ExportConfig default) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in res["edgecnn"].items():
        lines.append(f"| {name} {r['config']} | {cell(r['fake_quant'])} | {cell(r.get('onnxruntime'))} | "
                     f"{cell(r.get('onnxruntime_integer'))} | "
                     f"{cell(r.get('openvino_ir'))} | {cell(r.get('openvino_ir_f32'))} | "
                     f"{cell(r.get('openvino_ir_unlowered'))} |")
    lines += ["", "Lowering passes of the 'onnxruntime-integer' ONNX (a pass marked inexact changes results):", ""]
    lines += [f"- {name}: passes changed {r['onnxruntime_integer_passes']['changes']}, exact: "
              f"{r['onnxruntime_integer_passes']['exact']}" for name, r in res["edgecnn"].items()
              if r.get("onnxruntime_integer_passes")]
    if any(r.get("clamp_ranges") for r in res["edgecnn"].values()):
        lines += ["", "int8 ranges chosen for the ReLU6 outputs (min..max of their lower and upper ends, median "
                  "width / 6) and for the global pool's output (the classifier input):", ""]
    for name, r in res["edgecnn"].items():
        c = r.get("clamp_ranges") or {}
        if c:
            lines.append(f"- {name}: {c['relu6_outputs']} ReLU6 outputs, lower end {c['lo_min']}..{c['lo_max']}, upper "
                         f"end {c['hi_min']}..{c['hi_max']}, median width {c['width_over_6_median']} x 6; "
                         f"global pool {c['global_pool']}")
    if res["peers"]:
        lines += ["", "| peer | top-1 (agreement) |", "|---|---|"]
        lines += [f"| {k} | {cell(v)} |" for k, v in res["peers"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
