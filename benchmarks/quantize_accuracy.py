"""Float vs int8 (PTQ and QAT) test accuracy of small CNNs trained briefly on mnist5k.

Input: mnist5k at 1x32x32 (grayscale, bilinear-resized from 28x28) for the torchvision models, so
each trains in about a minute or two on 2 CPU cores; bn_cnn at its native 1x28x28 with the default
`TrainConfig()` (8 epochs). Every model starts from random init (no downloaded weights).
PTQ: the default QuantizeConfig (per-channel weights, 256 calibration images; observer 'auto' since
6ff89ff, the histogram observer before, which is what the committed results used).
QAT: the default QAT settings (3 epochs at lr 3e-4, KD from the float model, BN and observers frozen
after 2 epochs) unless --qat-epochs says otherwise.
PTQ is also run with bias correction on (--no-bias-correction skips it).
Optionally (--accuracy-aware MODEL:POINTS or MODEL:auto) reruns PTQ with a val-accuracy budget and
records which layers stayed float, what each recovered and what it costs in float weights.

    PYTHONPATH=. python benchmarks/quantize_accuracy.py                     # everything
    PYTHONPATH=. python benchmarks/quantize_accuracy.py --models bn_cnn --out benchmarks/results/quantize_bn_cnn.json

Results are written after each model, so an interrupted run keeps what it measured, with a Markdown
table beside the JSON. Models can run in separate processes (one per model, e.g. with
OMP_NUM_THREADS=1) and be merged afterwards; --save-models / --load-models reuse trained weights
(e.g. for a later --accuracy-aware run without retraining):

    PYTHONPATH=. python benchmarks/quantize_accuracy.py --models resnet18 --out /tmp/q/resnet18.json
    PYTHONPATH=. python benchmarks/quantize_accuracy.py --combine /tmp/q/a.json,/tmp/q/b.json
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecnn.compress.quantize import QuantizeConfig, quantize  # noqa: E402
from edgecnn.config import to_dict  # noqa: E402
from edgecnn.data import DataConfig, load_data  # noqa: E402
from edgecnn.io import atomic_path, write_json  # noqa: E402
from edgecnn.models import ModelConfig, build_model  # noqa: E402
from edgecnn.train import TrainConfig, evaluate, fit  # noqa: E402

MODELS = {
    # name: (model source, image size, training config)
    "bn_cnn": ("bn_cnn", None, TrainConfig()),
    "resnet18": ("torchvision:resnet18", 32, TrainConfig(epochs=3)),
    "mobilenet_v2": ("torchvision:mobilenet_v2", 32, TrainConfig(epochs=3)),
    "mobilenet_v3_small": ("torchvision:mobilenet_v3_small", 32, TrainConfig(epochs=4)),
    "efficientnet_b0": ("torchvision:efficientnet_b0", 32, TrainConfig(epochs=3)),
}


def environment() -> dict:
    import onnxruntime
    import torchao

    return {"python": platform.python_version(), "torch": torch.__version__, "torchao": torchao.__version__,
            "onnxruntime": onnxruntime.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_at_start": os.getloadavg()}


def summary(res) -> dict:
    d = res.to_dict()
    d["calibration"] = {k: v for k, v in d["calibration"].items() if k != "indices"}
    d.pop("config")
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--qat-epochs", type=int, default=None, help="QAT epochs (default: QuantizeConfig's)")
    ap.add_argument("--no-qat", action="store_true")
    ap.add_argument("--accuracy-aware", default="",
                    help="MODEL:POINTS, e.g. mobilenet_v3_small:0.5, or MODEL:auto (half of plain PTQ's val drop)")
    ap.add_argument("--fallback-candidates", type=int, default=QuantizeConfig().fallback_candidates,
                    help="accuracy-aware: most layers tried for float")
    ap.add_argument("--qat-freeze-after", type=int, default=None,
                    help="epochs after which QAT freezes BN statistics and observers (default: QuantizeConfig's)")
    ap.add_argument("--train-epochs", type=int, default=None, help="float training epochs (default: per model)")
    ap.add_argument("--no-bias-correction", action="store_true", help="skip the PTQ run with bias correction on")
    ap.add_argument("--save-models", default="", help="directory to save each trained float model's state_dict")
    ap.add_argument("--load-models", default="",
                    help="directory of MODEL.pt files (--save-models state_dicts or edgecnn checkpoints such as "
                         "a run's train/model.pt): skip training, reuse those weights")
    ap.add_argument("--out", default="benchmarks/results/quantize_accuracy.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--combine", default="",
                    help="comma list of result JSONs of this script: merge their models into --out and exit")
    args = ap.parse_args()
    if args.combine:
        combine(args.combine.split(","), args.out)
        return

    out = {"command": "PYTHONPATH=. python " + " ".join(sys.argv), "environment": environment(),
           "input": ("mnist5k; torchvision models at 1x32x32, bn_cnn at 1x28x28; test split 1000 images; "
                     "drops are float minus int8 test top-1 in points"),
           "results": {}}
    aa_model, _, aa_points = args.accuracy_aware.partition(":")
    datasets = {}
    for name in args.models.split(","):
        source, size, train_cfg = MODELS[name]
        if size not in datasets:
            datasets[size] = load_data(DataConfig(source="mnist5k", image_size=size, channels=1), args.seed)
        data = datasets[size]
        if args.train_epochs is not None:
            train_cfg = dataclasses.replace(train_cfg, epochs=args.train_epochs)
        torch.manual_seed(args.seed)
        model = build_model(ModelConfig(source), data.num_classes, data.input_shape[0])
        row = {"source": source, "input_shape": list(data.input_shape)}
        if args.load_models:
            path = Path(args.load_models) / f"{name}.pt"
            state = torch.load(path, map_location="cpu", weights_only=True)
            if "edgecnn_checkpoint" in state:       # a run's train/model.pt (edgecnn checkpoint format)
                state = state["state_dict"]
            model.load_state_dict(state)
            row["train"] = f"weights loaded from {path} (a --save-models state_dict or an edgecnn checkpoint)"
        else:
            t = time.perf_counter()
            fitted = fit(model, data, train_cfg, seed=args.seed, description=name)
            row["train"] = to_dict(train_cfg)
            row["train_seconds"] = round(time.perf_counter() - t, 1)
            row["train_history"] = fitted.history
            if args.save_models:
                Path(args.save_models).mkdir(parents=True, exist_ok=True)
                with atomic_path(Path(args.save_models) / f"{name}.pt") as tmp:
                    torch.save(model.state_dict(), tmp)
        model.cpu().eval()
        row["float_test"] = evaluate(model, data, "test")
        ptq = quantize(model, QuantizeConfig(bias_correction=False), data, seed=args.seed)
        row["ptq"] = summary(ptq)
        if not args.no_bias_correction:
            ptq_bc = quantize(model, QuantizeConfig(bias_correction=True), data, seed=args.seed)
            row["ptq_bias_correction"] = summary(ptq_bc)
        if not args.no_qat:
            qcfg = QuantizeConfig(mode="qat")
            if args.qat_epochs is not None:
                qcfg = dataclasses.replace(qcfg, train=dataclasses.replace(qcfg.train, epochs=args.qat_epochs))
            if args.qat_freeze_after is not None:
                qcfg = dataclasses.replace(qcfg, freeze_bn_after=args.qat_freeze_after,
                                           freeze_observers_after=args.qat_freeze_after)
            qat = quantize(model, qcfg, data, seed=args.seed)
            row["qat"] = summary(qat)
            row["qat"]["config_train"] = to_dict(qcfg.train)
            row["qat"]["freeze_bn_after"] = qcfg.freeze_bn_after
            row["qat"]["freeze_observers_after"] = qcfg.freeze_observers_after
        if name == aa_model:
            row["accuracy_aware"] = accuracy_aware(model, data, ptq, aa_points, args)
        row["table"] = {"float_top1": row["float_test"]["top1"], "ptq_top1": ptq.int8_test["top1"],
                        "ptq_bc_top1": row.get("ptq_bias_correction", {}).get("int8_test", {}).get("top1"),
                        "qat_top1": row.get("qat", {}).get("int8_test", {}).get("top1"),
                        "ptq_drop": ptq.accuracy_drop,
                        "ptq_bc_drop": row.get("ptq_bias_correction", {}).get("accuracy_drop"),
                        "qat_drop": row.get("qat", {}).get("accuracy_drop")}
        out["results"][name] = row
        write_json(args.out, out)
        write_markdown(Path(args.out).with_suffix(".md"), out)
        print(name, row["table"], flush=True)


def accuracy_aware(model, data, ptq, points: str, args) -> dict:
    """Plain PTQ's val drop, then PTQ with a val-accuracy budget ('auto': half of that drop, so one
    that plain PTQ misses) and the layers the search kept float."""
    float_val = evaluate(model, data, "val")["top1"]
    ptq_val = evaluate(ptq.model, data, "val")["top1"]
    drop = round(float_val - ptq_val, 2)
    budget = float(points) if points != "auto" else max(0.0, int(drop / 2 * 10) / 10)
    rec = {"float_val_top1": float_val, "plain_ptq_val_top1": ptq_val, "plain_ptq_val_drop": drop,
           "budget": budget, "budget_rule": "half the plain-PTQ val drop" if points == "auto" else "given",
           "plain_ptq_misses_budget": drop > budget}
    if not rec["plain_ptq_misses_budget"]:
        rec["message"] = f"plain PTQ loses {drop} val points, within {budget}: nothing to search"
        return rec
    aa = quantize(model, QuantizeConfig(max_accuracy_drop=budget, fallback_candidates=args.fallback_candidates),
                  data, seed=args.seed)
    rec.update(summary(aa))
    rec["int8_val_top1_with_fallback"] = evaluate(aa.model, data, "val")["top1"]
    return rec


def combine(paths: list[str], out_path: str) -> None:
    """One result file from several runs of this script (one model per process): every run's
    command and environment is kept, models are merged in the order given."""
    import json

    runs = [json.loads(Path(p).read_text()) for p in paths]
    out = {"command": "; ".join(r["command"] for r in runs),
           "combined_by": "PYTHONPATH=. python " + " ".join(sys.argv),
           "runs": [{"command": r["command"], "environment": r["environment"], "models": list(r["results"])}
                    for r in runs],
           "environment": runs[0]["environment"], "input": runs[0]["input"], "results": {}}
    loads = [r["environment"]["load_average_at_start"] for r in runs]
    out["environment"] = dict(out["environment"], load_average_at_start=[max(x[i] for x in loads) for i in range(3)])
    for r in runs:
        out["results"].update(r["results"])
    write_json(out_path, out)
    write_markdown(Path(out_path).with_suffix(".md"), out)


def write_markdown(path: Path, out: dict) -> None:
    """The headline table beside the JSON: test top-1 (percent) of float, PTQ, PTQ+bias correction, QAT."""
    def f(v):
        return "-" if v is None else f"{v:.1f}"

    cmds = [r["command"] for r in out.get("runs", [])] or [out["command"]]
    lines = ["Measured by " + ", ".join(f"`{c}`" for c in cmds) + f" ({out['input']}; load average at start "
             f"{', '.join(f'{x:.1f}' for x in out['environment']['load_average_at_start'])}"
             + (", the highest of the runs" if len(cmds) > 1 else "") + ").", "",
             "| model | input | train epochs | float top-1 | PTQ top-1 (drop) | PTQ + bias corr. top-1 (drop) "
             "| QAT epochs (freeze after) | QAT top-1 (drop) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in out["results"].items():
        t = row["table"]
        epochs = row["train"]["epochs"] if isinstance(row["train"], dict) else "loaded"
        qat = row.get("qat")
        qat_epochs = f"{qat['config_train']['epochs']} ({qat.get('freeze_bn_after')})" if qat else "-"
        lines.append(f"| {name} | {'x'.join(map(str, row['input_shape']))} | {epochs} | {f(t['float_top1'])} | "
                     f"{f(t['ptq_top1'])} ({f(t['ptq_drop'])}) | {f(t['ptq_bc_top1'])} ({f(t['ptq_bc_drop'])}) | "
                     f"{qat_epochs} | {f(t['qat_top1'])} ({f(t['qat_drop'])}) |")
    for name, row in out["results"].items():
        aa = row.get("accuracy_aware")
        if not aa:
            continue
        lines += ["", f"Accuracy-aware PTQ on {name}: float val top-1 {aa['float_val_top1']}, plain PTQ "
                  f"{aa['plain_ptq_val_top1']} (drop {aa['plain_ptq_val_drop']}), budget {aa['budget']} "
                  f"({aa['budget_rule']})."]
        if "fallback" not in aa:
            lines.append(aa["message"])
            continue
        fb = aa["fallback"]
        lines += [f"{fb['message']}; {fb['trials']} PTQ trials on {fb['val_images']} val images; int8 test "
                  f"top-1 {aa['int8_test']['top1']} vs float {aa['float_test']['top1']}.", "",
                  "| layer kept float | val top-1 before -> after | val top-1 if int8 again | float weights |",
                  "|---|---|---|---|"]
        for a in fb["float_layers"]:
            lines.append(f"| {a['layer']} | {a['val_top1_before']} -> {a['val_top1_after']} | "
                         f"{a.get('val_top1_if_int8_again', '-')} | {a['weights']} (+{a['extra_weight_bytes']} B) |")
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
