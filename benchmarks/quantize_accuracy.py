"""Float vs int8 (PTQ and QAT) test accuracy of small CNNs trained briefly on mnist5k.

Input: mnist5k at 1x32x32 (grayscale, bilinear-resized from 28x28) for the torchvision models, so
each trains in about a minute or two on 2 CPU cores; bn_cnn at its native 1x28x28 with the default
`TrainConfig()` (8 epochs). Every model starts from random init (no downloaded weights).
PTQ: the default QuantizeConfig (histogram observer, per-channel weights, 256 calibration images).
QAT: the default QAT settings (3 epochs at lr 3e-4, KD from the float model, BN and observers frozen
after 2 epochs) unless --qat-epochs says otherwise.
Optionally (--accuracy-aware MODEL:POINTS) reruns PTQ with a val-accuracy budget and records which
layers stayed float.

    PYTHONPATH=. python benchmarks/quantize_accuracy.py                     # everything
    PYTHONPATH=. python benchmarks/quantize_accuracy.py --models bn_cnn --out benchmarks/results/quantize_bn_cnn.json

Results are written after each model, so an interrupted run keeps what it measured.
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
from edgecnn.io import write_json  # noqa: E402
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
    ap.add_argument("--accuracy-aware", default="", help="MODEL:POINTS, e.g. mobilenet_v3_small:0.5")
    ap.add_argument("--out", default="benchmarks/results/quantize_accuracy.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    out = {"command": "PYTHONPATH=. python " + " ".join(sys.argv), "environment": environment(),
           "input": "mnist5k; torchvision models at 1x32x32, bn_cnn at 1x28x28; test split 1000 images",
           "results": {}}
    aa_model, _, aa_points = args.accuracy_aware.partition(":")
    datasets = {}
    for name in args.models.split(","):
        source, size, train_cfg = MODELS[name]
        if size not in datasets:
            datasets[size] = load_data(DataConfig(source="mnist5k", image_size=size, channels=1), args.seed)
        data = datasets[size]
        torch.manual_seed(args.seed)
        model = build_model(ModelConfig(source), data.num_classes, data.input_shape[0])
        t = time.perf_counter()
        fit(model, data, train_cfg, seed=args.seed, description=name)
        train_s = time.perf_counter() - t
        model.eval()
        row = {"source": source, "input_shape": list(data.input_shape), "train": to_dict(train_cfg),
               "train_seconds": round(train_s, 1), "float_test": evaluate(model, data, "test")}
        ptq = quantize(model, QuantizeConfig(), data, seed=args.seed)
        row["ptq"] = summary(ptq)
        if not args.no_qat:
            qcfg = QuantizeConfig(mode="qat")
            if args.qat_epochs is not None:
                qcfg = dataclasses.replace(qcfg, train=dataclasses.replace(qcfg.train, epochs=args.qat_epochs))
            qat = quantize(model, qcfg, data, seed=args.seed)
            row["qat"] = summary(qat)
            row["qat"]["config_train"] = to_dict(qcfg.train)
        if name == aa_model:
            aa = quantize(model, QuantizeConfig(max_accuracy_drop=float(aa_points)), data, seed=args.seed)
            row["accuracy_aware"] = summary(aa)
        row["table"] = {"float_top1": row["float_test"]["top1"], "ptq_top1": ptq.int8_test["top1"],
                        "qat_top1": row.get("qat", {}).get("int8_test", {}).get("top1"),
                        "ptq_drop": ptq.accuracy_drop, "qat_drop": row.get("qat", {}).get("accuracy_drop")}
        out["results"][name] = row
        write_json(args.out, out)
        print(name, row["table"], flush=True)


if __name__ == "__main__":
    main()
