"""A realistic run directory without running anything: manifest.json in the shapes the stages write
(train, prune with a sensitivity scan, quantize, export artifacts, verify measurements on two
targets plus the PyTorch reference rows) and the per-image logits and labels the verify stage saves.

    python tests/report/fake_run.py /tmp/fake-run    # writes the run, then its reports
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

N, K = 200, 10
CLASSES = [str(i) for i in range(K)]
# (format, precision, size in bytes) of the exported artifacts
ARTIFACTS = [("onnx", "fp32", 412_000), ("openvino", "fp32", 415_500), ("tflite", "fp32", 409_800),
             ("onnx", "int8", 118_300), ("openvino", "int8", 131_000), ("tflite", "int8", 109_900)]
# target -> runtime -> p50 ms per precision (fp32, int8)
LATENCY = {"local-cpu": {"onnx": (0.21, 0.12), "openvino": (0.15, 0.09), "tflite": (0.30, 0.11)},
           "local-cpu-1t": {"onnx": (0.35, 0.20), "openvino": (0.26, 0.16), "tflite": (0.52, 0.19)}}
RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert"}
EXT = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}


def _logits(rng, labels, acc_flip: np.ndarray, noise: float, base: np.ndarray | None = None) -> np.ndarray:
    if base is None:
        base = rng.normal(0, 1, (len(labels), K)).astype(np.float32)
        base[np.arange(len(labels)), labels] += 6.0
        wrong = (labels + 1) % K
        base[acc_flip, wrong[acc_flip]] += 9.0
    return (base + rng.normal(0, noise, base.shape)).astype(np.float32)


def _row(name, target, fmt, prec, top1, agree, mad, p50, size, logits_rel, runtime=None):
    return {"name": name, "target": target, "runtime": runtime or RUNTIME.get(fmt, "torch"), "format": fmt,
            "precision": prec, "status": "ok", "error": None, "n_images": N, "top1": top1, "top5": 99.5,
            "agreement_top1": agree, "max_abs_diff": mad, "mean_abs_diff": mad / 10,
            "latency_ms": {"p50": p50, "p90": round(p50 * 1.15, 4), "p99": round(p50 * 1.6, 4),
                           "mean": round(p50 * 1.05, 4), "std": round(p50 * 0.08, 4), "min": round(p50 * 0.9, 4),
                           "max": round(p50 * 3, 4), "runs": 200},
            "throughput_ips": round(1000 / p50 * 1.8, 1), "throughput_batch": 32, "eval_batch": 64, "load_s": 0.05,
            "peak_rss_mb": 410.0 + size / 1e5, "rss_added_mb": 12.0, "size_bytes": size, "threads": 2 if target == "local-cpu" else 1,
            "remote": False, "env": {"hostname": "ci", "cpu": {"model": "Fake CPU"}}, "logits": logits_rel}


def make_run(run_dir: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    run_dir = Path(run_dir)
    (run_dir / "verify" / "logits").mkdir(parents=True, exist_ok=True)
    (run_dir / "prune").mkdir(parents=True, exist_ok=True)
    labels = rng.integers(0, K, N)
    np.save(run_dir / "verify" / "labels.npy", labels)
    flip = np.zeros(N, bool)
    flip[rng.choice(N, 7, replace=False)] = True               # fp32 reference: 96.5 %
    ref = _logits(rng, labels, flip, 0.0)
    flip_q = flip.copy()
    flip_q[np.flatnonzero(~flip)[:1]] = True                   # fake-quant int8: 96.0 %
    ref_q = _logits(rng, labels, flip_q, 0.0, ref.copy())
    ref_q[flip_q & ~flip, (labels + 1)[flip_q & ~flip] % K] += 9.0

    def save(name, arr):
        rel = f"verify/logits/{name}.npy"
        np.save(run_dir / rel, arr)
        return rel

    def stats(arr, against):
        top1 = round(100.0 * float((arr.argmax(1) == labels).mean()), 2)
        agree = round(100.0 * float((arr.argmax(1) == against.argmax(1)).mean()), 2)
        return top1, agree, round(float(np.abs(arr - against).max()), 5)

    artifacts, rows = [], []
    for t in LATENCY:
        rows.append(_row("torch-fp32", t, "torch", "fp32", *stats(ref, ref), 0.9, 0, save(f"torch-fp32@{t}", ref), "torch"))
        rows.append(_row("torch-int8", t, "torch", "int8", *stats(ref_q, ref_q), 1.4, 0, save(f"torch-int8@{t}", ref_q), "torch"))
    for fmt, prec, size in ARTIFACTS:
        name = f"model_{prec}{EXT[fmt]}"
        name = f"{fmt}/{name}" if fmt != "onnx" else name
        fname = Path(name).name if fmt == "onnx" else f"model_{prec}_{fmt}{EXT[fmt]}"
        base = ref if prec == "fp32" else ref_q
        noise = 1e-5 if prec == "fp32" else 0.02
        art_logits = _logits(rng, labels, flip, noise, base.copy())
        if (fmt, prec) == ("tflite", "int8"):   # one runtime rounds differently on a few images
            idx = np.flatnonzero(art_logits.argmax(1) == labels)[:4]
            art_logits[idx, (labels[idx] + 3) % K] += 12.0
        top1, agree, mad = stats(art_logits, base)
        artifacts.append({"name": fname, "format": fmt, "precision": prec, "path": f"export/{fname}",
                          "size_bytes": size, "sha256": hashlib.sha256(fname.encode()).hexdigest(),
                          "contract": {"format": fmt, "precision": prec, "file": fname,
                                       "input": {"shape": [1, 1, 28, 28], "layout": "NCHW", "dtype": "float32"},
                                       "class_names": CLASSES},
                          "verification": {"top1_agreement": agree, "max_abs_diff": mad, "n": N, "passed": True}})
        for t, lat in LATENCY.items():
            logits = art_logits + rng.normal(0, 1e-6, art_logits.shape).astype(np.float32)
            rows.append(_row(fname, t, fmt, prec, top1, agree, mad, lat[fmt][prec == "int8"], size,
                             save(f"{fname}@{t}", logits)))
    sensitivity = {"ratios": [0.1, 0.3, 0.5, 0.7],
                   "layers": {"features.0": [96.4, 95.9, 93.0, 81.2], "features.3": [96.5, 96.3, 95.1, 90.0],
                              "features.6": [96.5, 96.4, 96.0, 94.8], "classifier.0": [96.5, 96.5, 96.2, 95.5]}}
    (run_dir / "prune" / "prune.json").write_text(json.dumps({"sensitivity": sensitivity}))
    manifest = {
        "schema": "edgecnn.manifest/1",
        "recipe": {"name": "fake", "seed": 0, "data": {"source": "mnist5k"}, "model": {"source": "bn_cnn"},
                   "stages": [{"train": {"epochs": 8}}, {"prune": {"ratio_source": "sensitivity"}},
                              {"quantize": {"mode": "ptq"}}],
                   "report": {"formats": ["json", "md", "html"], "agreement_threshold": 99.0}},
        "recipe_hash": "3f1c2a9d" * 8, "edgecnn_version": "0.1.0", "updated": "2025-01-01T00:00:00+00:00",
        "finished": "2025-01-01T00:05:00+00:00",
        "data": {"source": "mnist5k", "fingerprint": "ab" * 32, "splits": {"train": 4000, "val": 500, "test": 500},
                 "classes": CLASSES},
        "stages": {
            "train": {"kind": "train", "status": "done", "config": {"epochs": 8}, "seconds": 41.2,
                      "outputs": {"model": {"path": "train/model.pt", "sha256": "0" * 64}},
                      "metrics": {"test": {"top1": 96.9, "top5": 99.8, "loss": 0.104, "n": 500},
                                  "macs": 2_466_000, "params": 102_730,
                                  "fit": {"epochs": 8, "best_val_top1": 97.2}}},
            "prune": {"kind": "prune", "status": "done", "config": {"ratio_source": "sensitivity"}, "seconds": 63.0,
                      "outputs": {"prune": {"path": "prune/prune.json", "sha256": "1" * 64}},
                      "metrics": {"method": "structured", "macs_before": 2_466_000, "macs_after": 1_210_000,
                                  "macs_ratio": 2.038, "params_before": 102_730, "params_after": 51_200,
                                  "top1_before": 96.9, "top1_pruned": 88.1, "top1_after": 96.5,
                                  "eval_split": "val", "finetune_with": "distill"}},
            "quantize": {"kind": "quantize", "status": "done", "config": {"mode": "ptq"}, "seconds": 5.1,
                         "metrics": {"test": {"top1": 96.0, "top5": 99.7, "loss": 0.12, "n": 500},
                                     "float_top1": 96.5, "int8_top1": 96.0, "float_layers": ["classifier.2"]}},
            "export": {"kind": "export", "status": "done", "config": {"formats": ["onnx", "openvino", "tflite"]},
                       "seconds": 22.4, "metrics": {"artifacts": artifacts}},
            "verify": {"kind": "verify", "status": "done", "config": {"targets": list(LATENCY)}, "seconds": 80.0,
                       "metrics": {"measurements": rows, "labels": "verify/labels.npy",
                                   "targets": {"local-cpu": {"kind": "local", "budgets": {"latency_ms": 1.0, "size_mb": 1.0}},
                                               "local-cpu-1t": {"kind": "local", "budgets": {}}}}},
        },
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


if __name__ == "__main__":
    from edgecnn.report import write_reports
    from edgecnn.recipe import ReportConfig

    d = Path(sys.argv[1])
    m = make_run(d)
    print(write_reports(d, m, ReportConfig()))
