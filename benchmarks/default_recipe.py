"""The default recipe (`edgecnn run` with no argument) at several model widths, side by side.

    PYTHONPATH=. python benchmarks/default_recipe.py --widths 16 40 48 \
        --out benchmarks/results/default_recipe.json

Each width is one `edgecnn run` of the built-in recipe with `model.options.width` (and the run's
name) changed, in a fresh process and a fresh run directory, one after the other. Recorded per
width, all from the run's own manifest and report: the wall time of the command and of each stage;
the pruned model's parameters and MACs; test top-1 after each stage; every artifact's bytes, and the
int8 / fp32 ratio per format (the OpenVINO IR counts .xml + .bin, as a user ships it; its .bin alone
is given too); each artifact's agreement with its PyTorch reference at export (the float model, or
the fake-quant graph for int8) and in the verify stage on the 1,000 test images, per target; the
lowest pairwise top-1 agreement between the int8 artifacts; the 1-thread p50 latency.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import cpu, cpu_line, git, loadavg, log, versions, write_results  # noqa: E402

FORMATS = ("onnx", "openvino", "tflite")


def run_width(width: int, work: Path) -> dict[str, Any]:
    from edgecnn.recipe import default_recipe_text

    recipe = yaml.safe_load(default_recipe_text())
    recipe["name"] = f"w{width}"
    recipe["model"].setdefault("options", {})["width"] = width
    path = work / f"w{width}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgecnn.cli", "run", str(path), "--runs", str(work)],
                          capture_output=True, text=True)
    wall = round(time.perf_counter() - t, 1)
    if proc.returncode:
        raise SystemExit(f"width {width}: edgecnn run exited {proc.returncode}\n{proc.stderr[-3000:]}")
    run_dir = work / f"w{width}"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    stages = manifest["stages"]
    prune = stages["prune"]["metrics"]
    out: dict[str, Any] = {
        "width": width, "run_seconds": wall,
        "stage_seconds": {k: round(v["seconds"], 1) for k, v in stages.items()},
        "test_top1": {k: v["metrics"]["test"]["top1"] for k, v in stages.items() if "test" in v.get("metrics", {})},
        "params": {"before": prune["params_before"], "after": prune["params_after"]},
        "macs": {"before": prune["macs_before"], "after": prune["macs_after"]},
        "quantize_observer": stages["quantize"]["metrics"].get("observer"),
        "artifacts": {},
    }
    export = run_dir / "export"
    for a in report["artifacts"]:
        v = a["verification"]
        out["artifacts"][a["name"]] = {
            "format": a["format"], "precision": a["precision"], "bytes": a["size_bytes"],
            "export_check": {"reference": v["reference"], "n": v["n"], "top1_agreement": v["top1_agreement"],
                             "max_abs_diff": v["max_abs_diff"]},
            "verify": {m["target"]: {"top1": m["accuracy"]["top1"], "n": m["accuracy"]["n"],
                                     "top1_agreement": m["agreement"]["top1_agreement"],
                                     "p50_ms": m["latency_ms"]["p50"]}
                       for m in a["measurements"] if m["status"] == "ok"},
        }
    arts = {(a["format"], a["precision"]): a for a in out["artifacts"].values()}
    out["int8_ratio"] = {f: round(arts[(f, "int8")]["bytes"] / arts[(f, "fp32")]["bytes"], 4) for f in FORMATS}
    bins = {p: (export / f"model_{p}.bin").stat().st_size for p in ("fp32", "int8")}
    xmls = {p: (export / f"model_{p}.xml").stat().st_size for p in ("fp32", "int8")}
    out["openvino_parts"] = {"bin": bins, "xml": xmls, "bin_ratio": round(bins["int8"] / bins["fp32"], 4)}
    group = report["consistency"]["groups"]["int8"]
    names, agree = group["names"], group["top1_agreement"]
    out["int8_pairwise_min_agreement"] = min(agree[i][j] for i in range(len(names)) for j in range(len(names))
                                             if i != j)
    out["int8_consistency_flagged"] = group["flagged"]
    return out


def markdown(res: dict[str, Any]) -> str:
    rows = res["widths"]
    lines = [
        "# The default recipe at several model widths",
        "",
        f"`{res['command']}` at `{res['git']['commit'][:7]}`{' (dirty)' if res['git'].get('dirty') else ''}; "
        f"{cpu_line(res['cpu'])}; {res['seconds']} s in all. Each width is one `edgecnn run` of the built-in "
        "recipe with only `model.options.width` changed (bn_cnn on mnist5k, pruned to half the MACs with "
        "distillation, PTQ int8, ONNX + OpenVINO IR + TFLite, verified on local-cpu and local-cpu-1t).",
        "",
        "| width | params (pruned) | MACs (pruned) | `edgecnn run` s | test top-1 train / prune / int8 % "
        "| ONNX int8/fp32 | IR int8/fp32 (.xml+.bin) | IR .bin alone | TFLite int8/fp32 "
        "| int8 vs fake-quant, lowest (1,000 test images) | int8 pairwise, lowest |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["test_top1"]
        int8_agree = min(v["top1_agreement"] for a in r["artifacts"].values() if a["precision"] == "int8"
                         for v in a["verify"].values())
        q = r["int8_ratio"]
        lines.append(
            f"| {r['width']} | {r['params']['after']:,} | {r['macs']['after'] / 1e6:.1f} M | {r['run_seconds']} "
            f"| {t.get('train')} / {t.get('prune')} / {t.get('quantize')} "
            f"| {100 * q['onnx']:.1f}% | {100 * q['openvino']:.1f}% | {100 * r['openvino_parts']['bin_ratio']:.1f}% "
            f"| {100 * q['tflite']:.1f}% | {int8_agree:.1f}% | {r['int8_pairwise_min_agreement']:.1f}% |")
    lines += ["", "Stage seconds and the IR's parts (bytes, fp32 -> int8):", "",
              "| width | train | prune | quantize | export | verify | IR .xml | IR .bin |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, p = r["stage_seconds"], r["openvino_parts"]
        lines.append(f"| {r['width']} | {s.get('train')} | {s.get('prune')} | {s.get('quantize')} | {s.get('export')} "
                     f"| {s.get('verify')} | {p['xml']['fp32']:,} -> {p['xml']['int8']:,} "
                     f"| {p['bin']['fp32']:,} -> {p['bin']['int8']:,} |")
    lines += ["", "Per artifact (bytes; export check against its reference; verify stage, 1,000 test images, "
              "at 1 thread):", "",
              "| width | artifact | bytes | export check | test top-1 % | agreement % | p50 ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, a in r["artifacts"].items():
            e, v = a["export_check"], a["verify"].get("local-cpu-1t", {})
            lines.append(f"| {r['width']} | {name} | {a['bytes']:,} | {e['top1_agreement']:.1f}% of {e['n']} vs "
                         f"{e['reference']} | {v.get('top1')} | {v.get('top1_agreement')} | {v.get('p50_ms')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 40, 48])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/default_recipe.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    res: dict[str, Any] = {"command": "PYTHONPATH=. python benchmarks/default_recipe.py --widths "
                                      + " ".join(map(str, args.widths)),
                           "git": git(), "cpu": cpu(), "versions": versions(), "loadavg_start": loadavg(),
                           "widths": []}
    with tempfile.TemporaryDirectory(prefix="edgecnn-default-") as tmp:
        for w in args.widths:
            log(f"width {w} ...")
            res["widths"].append(run_width(w, Path(tmp)))
            r = res["widths"][-1]
            log(f"  {r['run_seconds']} s, int8/fp32 {r['int8_ratio']}")
    write_results(res, args.out, markdown, t0)


if __name__ == "__main__":
    main()
