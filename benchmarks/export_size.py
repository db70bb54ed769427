"""What the bytes of each int8 artifact are, fp32 -> int8 ratios, two source trees side by side.

    PYTHONPATH=. python benchmarks/export_size.py --before /tmp/head --run runs/quickstart \
        --torchvision resnet18 mobilenet_v2 --out benchmarks/results/export_size.json

`--run` is a finished run of the default recipe (`edgecnn run`): its last float checkpoint
(prune/model.pt, else train/model.pt) and quantize/quantized.pt2 are exported by each tree
(`export_all`, ONNX + OpenVINO IR + TFLite, fp32 + int8, every artifact verified) in a fresh process
with PYTHONPATH set to that tree. `--torchvision NAME...` adds torchvision models at 32x32x3
(random init, seed 0, PTQ on 64 mnist5k calibration images, made once by this checkout and
exported by both trees); their verification floors are lifted (an untrained net's near-tied logits
say nothing about the file size), and the outputs of the two trees' artifacts on 8 random inputs
are compared instead. Size = whole files (.onnx; .tflite; .xml + .bin). The breakdown splits each
TFLite file by what its flatbuffer holds and each IR .xml by element kind; the ONNX file by
initializer bytes vs the rest. `--before` is a copy of an earlier commit (`git archive C | tar -x -C DIR`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EXPORT = r"""
import json, sys
from pathlib import Path
import numpy as np, torch
from edgecnn.data import DataConfig, load_data
from edgecnn.export import ExportConfig, export_all
from edgecnn.models import ModelConfig, build_model
from edgecnn.runtimes import open_session
import importlib
q = importlib.import_module("edgecnn.compress.quantize")
spec = json.loads(sys.argv[1])
data = load_data(DataConfig(**spec["data"]), 0)
model = build_model(ModelConfig(**spec["model"]), data.num_classes, data.input_shape[0]).eval()
qm = q.load_quantized(spec["quantized"])
cfg = ExportConfig(formats=["onnx", "openvino", "tflite"], precisions=["fp32", "int8"], **spec["export"])
arts = export_all(model, qm, data, Path(spec["out"]), cfg)
x = np.random.default_rng(0).standard_normal((8, *data.input_shape)).astype(np.float32)
res = {}
for a in arts:
    with open_session(a) as s:
        np.save(Path(spec["out"]) / f"{a.format}_{a.precision}.npy", s.run(x))
    res[f"{a.format}_{a.precision}"] = {"files": {p.name: p.stat().st_size for p in a.files},
        "top1_agreement": a.verification["top1_agreement"], "samples": a.verification["samples"]}
print("RESULT" + json.dumps(res))
"""


def tflite_breakdown(path: Path) -> dict:
    from ai_edge_litert import schema_py_generated as fb

    buf = path.read_bytes()
    m = fb.Model.GetRootAs(buf, 0)
    mt = fb.ModelT.InitFromObj(m)
    meta = {}
    for md in mt.metadata or []:
        d = mt.buffers[md.buffer].data
        meta[md.name.decode()] = 0 if d is None else len(d)
    data = sum(len(b.data) for b in mt.buffers if b.data is not None)
    sg = mt.subgraphs[0]
    vec = {"scales": 0, "zero_points": 0}
    seen: set[int] = set()           # vectors stored once and shared count once
    for i in range(m.Subgraphs(0).TensorsLength()):
        qp = m.Subgraphs(0).Tensors(i).Quantization()
        if qp is None:
            continue
        for key, field, width in (("scales", 8, 4), ("zero_points", 10, 8)):
            o = qp._tab.Offset(field)
            if o:
                pos = qp._tab.Vector(o)
                if pos not in seen:
                    seen.add(pos)
                    vec[key] += width * qp._tab.VectorLen(o)
    names = sum(len(t.name or b"") for t in sg.tensors)
    out = {"file": len(buf), "weights_and_biases": data - sum(meta.values()),
           "metadata": meta, "quant_scales": vec["scales"], "quant_zero_points_int64": vec["zero_points"],
           "tensor_names": names, "tensors": len(sg.tensors), "operators": len(sg.operators),
           "buffers": len(mt.buffers), "empty_buffers": sum(1 for b in mt.buffers if b.data is None or not len(b.data))}
    out["tables_offsets_padding_rest"] = (len(buf) - data - vec["scales"] - vec["zero_points"] - names)
    return out


def xml_breakdown(path: Path) -> dict:
    s = path.read_text(encoding="utf-8")

    def total(pattern: str, flags: int = 0) -> int:
        return sum(len(x) for x in re.findall(pattern, s, flags))

    layers = re.findall(r'<layer [^>]*type="(\w+)"', s)
    kinds: dict[str, int] = {}
    for k in layers:
        kinds[k] = kinds.get(k, 0) + 1
    out = {"file": len(s.encode()), "whitespace_between_tags": sum(len(x) for x in re.findall(r">(\s+)<", s)),
           "dim_elements": total(r"<dim>[^<]*</dim>"), "port_tags": total(r"</?port[^>]*>"),
           "layer_tags": total(r"</?layer[^>]*>"), "layer_name_attributes": total(r'<layer id="\d+"( name="[^"]*")'),
           "data_elements": total(r"<data [^>]*>"), "input_output_tags": total(r"</?(?:input|output)>"),
           "edges": total(r"<edge [^>]*>"), "rt_info": total(r"<rt_info>.*</rt_info>", re.S),
           "layers": len(layers), "layer_types": kinds}
    return out


def onnx_breakdown(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path))
    init = sum(len(t.raw_data) for t in m.graph.initializer)
    meta = sum(len(p.key) + len(p.value) for p in m.metadata_props)
    return {"file": path.stat().st_size, "initializer_data": init, "metadata_props": meta,
            "rest": path.stat().st_size - init - meta}


def breakdown(folder: Path) -> dict:
    out = {}
    for prec in ("fp32", "int8"):
        out[f"onnx_{prec}"] = onnx_breakdown(folder / f"model_{prec}.onnx")
        out[f"tflite_{prec}"] = tflite_breakdown(folder / f"model_{prec}.tflite")
        out[f"openvino_{prec}"] = {"xml": xml_breakdown(folder / f"model_{prec}.xml"),
                                   "bin": (folder / f"model_{prec}.bin").stat().st_size}
    return out


def export_with(tree: Path, spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-c", EXPORT, json.dumps(spec)], env=env, capture_output=True,
                          text=True, cwd="/tmp")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode or not line:
        raise SystemExit(f"export with {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT"):])


def prepare_torchvision(name: str, folder: Path) -> dict:
    import importlib

    import torch

    from edgecnn.data import DataConfig, load_data
    from edgecnn.models import ModelConfig, build_model
    from edgecnn.models.checkpoint import save_checkpoint

    q = importlib.import_module("edgecnn.compress.quantize")
    dcfg = {"source": "mnist5k", "image_size": 32, "channels": 3}
    data = load_data(DataConfig(**dcfg), 0)
    torch.manual_seed(0)
    model = build_model(ModelConfig(source=f"torchvision:{name}"), data.num_classes, 3).eval()
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "model.pt", model)
    res = q.quantize(model, q.QuantizeConfig(calibration_samples=64, bias_correction=False), data, seed=0)
    q.save_quantized(folder / "quantized.pt2", res.model, data.example_input(2))
    return {"data": dcfg, "model": {"source": f"torchvision:{name}", "checkpoint": str(folder / "model.pt")},
            "quantized": str(folder / "quantized.pt2"),
            "export": {"verify_samples": 32, "int8_tolerance": 1e6, "int8_min_agreement": 0.0}}


def run_spec(run: Path) -> dict:
    float_ckpt = next(p for p in (run / "prune/model.pt", run / "train/model.pt") if p.exists())
    return {"data": {"source": "mnist5k"}, "model": {"source": "bn_cnn", "options": {"width": 16},
                                                     "checkpoint": str(float_ckpt)},
            "quantized": str(run / "quantize/quantized.pt2"), "export": {"verify_samples": 1000}}


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="tree of the earlier commit")
    ap.add_argument("--after", type=Path, default=ROOT, help="tree to compare (default: this checkout)")
    ap.add_argument("--run", type=Path, help="a finished default-recipe run directory")
    ap.add_argument("--torchvision", nargs="*", default=[], help="torchvision models at 32x32x3")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/export_size.json")
    args = ap.parse_args(argv)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    work = Path(tempfile.mkdtemp(prefix="export_size."))
    specs = {}
    if args.run:
        specs["default_recipe"] = run_spec(args.run.resolve())
    for name in args.torchvision:
        specs[name] = prepare_torchvision(name, work / "models" / name)
    results: dict = {}
    for model, spec in specs.items():
        results[model] = {}
        for tag, tree in trees.items():
            out = work / tag / model
            res = export_with(tree, {**spec, "out": str(out)})
            sizes = {k: sum(v["files"].values()) for k, v in res.items()}
            results[model][tag] = {
                "files": {k: v["files"] for k, v in res.items()},
                "top1_agreement": {k: v["top1_agreement"] for k, v in res.items()},
                "int8_over_fp32": {f: round(sizes[f"{f}_int8"] / sizes[f"{f}_fp32"], 4)
                                   for f in ("onnx", "openvino", "tflite")},
                "breakdown": breakdown(out)}
            print(model, tag, results[model][tag]["int8_over_fp32"], flush=True)
        same = {}
        for k in results[model]["after"]["files"]:
            a = np.load(work / "after" / model / f"{k}.npy")
            b = np.load(work / "before" / model / f"{k}.npy")
            same[k] = bool(np.array_equal(a, b))
        results[model]["outputs_identical_before_after"] = same
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    from edgecnn.export.base import versions
    from edgecnn.io import write_json

    doc = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "git_commit": commit,
           "trees": {k: str(v) for k, v in trees.items()},
           "versions": versions("onnx", "openvino", "litert-torch", "ai-edge-litert", "flatbuffers"),
           "results": results}
    write_json(args.out, doc)
    print(json.dumps({m: {t: r[t]["int8_over_fp32"] for t in trees} for m, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
