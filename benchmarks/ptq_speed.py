"""Wall time of int8 PTQ for torchvision resnet18 at 3x224x224 with 512 calibration images.

Random-init weights (speed does not depend on training); mnist5k images resized to 224x224 and
repeated to 3 channels as calibration data. Goal on the 2-core dev machine: under 2 minutes.
Times each step (export, prepare, calibrate, convert) and the whole `quantize` call, which also
evaluates the float and int8 graphs on the 1,000 test images (reported apart).

    PYTHONPATH=. python benchmarks/ptq_speed.py [--observer histogram] [--samples 512]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecnn.compress.calibration import load_calibration  # noqa: E402
from edgecnn.compress.quantize import QuantizeConfig, _ptq, export_graph  # noqa: E402
from edgecnn.data import DataConfig, load_data  # noqa: E402
from edgecnn.io import write_json  # noqa: E402
from edgecnn.models import ModelConfig, build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--observer", default="histogram")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--out", default="benchmarks/results/ptq_speed.json")
    args = ap.parse_args()

    load_avg = os.getloadavg()
    data = load_data(DataConfig(source="mnist5k", image_size=224, channels=3, calibration_size=args.samples), 0)
    torch.manual_seed(0)
    model = build_model(ModelConfig("torchvision:resnet18"), data.num_classes, 3).eval()
    cfg = QuantizeConfig(observer=args.observer, calibration_samples=args.samples)

    t0 = time.perf_counter()
    calib = load_calibration(data, cfg.calibration_samples, batch_size=cfg.calibration_batch_size)
    t_calib_data = time.perf_counter() - t0
    t = time.perf_counter()
    graph = export_graph(model, calib.batches[0])
    t_export = time.perf_counter() - t
    timings: dict[str, float] = {}
    q = _ptq(graph, cfg, calib.batches, (), timings)
    total = time.perf_counter() - t0
    with torch.no_grad():
        x = calib.batches[0][:8]
        y = q(x)
    import onnxruntime
    import torchao

    write_json(args.out, {
        "command": "PYTHONPATH=. python " + " ".join(sys.argv),
        "what": "PTQ wall time: load calibration tensors, torch.export, prepare_pt2e, calibrate, convert_pt2e",
        "model": "torchvision:resnet18 (random init)", "input_shape": [3, 224, 224],
        "calibration_images": calib.count, "observer": args.observer, "per_channel": True,
        "seconds": {"total": round(total, 1), "calibration_data": round(t_calib_data, 1),
                    "export": round(t_export, 1), **{k: round(v, 1) for k, v in timings.items()}},
        "goal_seconds": 120, "met": total < 120, "output_shape": list(y.shape),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "torchao": torchao.__version__, "onnxruntime": onnxruntime.__version__,
                        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "load_average_at_start": load_avg,
                        "note": "shared 2-core machine: other jobs ran at the same time (see load average)"},
    })
    print(f"PTQ resnet18 224x224, {calib.count} images: {total:.1f} s  {timings}")


if __name__ == "__main__":
    main()
