"""int8 accuracy of edgecnn PTQ against ONNX Runtime's quantize_static over several model instances.

One 224-px model (the suite's 224 mode) is one draw: its float top-1 is ~70% on mobilenet_v2 and
its int8 rows differ by a few points from instance to instance, so a comparison on one instance can
be luck. This script builds `--seeds` instances (`suite.train` + `suite.adapt_224` with the seed
changed; the data, its splits and the calibration images stay those of seed 0) and scores, on the
same `--test` test images of each:

- edgecnn PTQ (QuantizeConfig defaults: observer 'auto' since 6ff89ff, the histogram observer
  before; per-channel 8-bit weights, bias correction), and with each `--variants` override (default `weight_bits=7`; e.g. `observer=mse`,
  `bias_correction=false`), each exported as QDQ ONNX lowered 'onnxruntime' and run in ONNX Runtime
  (what the suite's 'onnxruntime' row runs);
- ORT `quantize_static` QOperator u8s8 per-channel MinMax, with and without reduce_range (7-bit
  weights), on the same fp32 ONNX and calibration images.

Per instance and edgecnn row: top-1 and the paired comparison with each ORT row (images only one
side gets right, exact McNemar p); over instances: the mean top-1, and the paired comparison pooled
(discordant images summed over instances, the same test).

    PYTHONPATH=. python benchmarks/quantize_seeds.py --model mobilenet_v2 --seeds 0 1 2 \
        --out benchmarks/results/quantize_seeds_mobilenet_v2.json

`--pruned` builds each instance as the suite builds its pruned 224 rows: edgecnn prune + distill
at the main size, then the same adaptation to 224 px.

Each instance takes ~4-6 minutes on 2 cores (training, adapting, one PTQ per row, two quantize_static).
"""
from __future__ import annotations

import argparse
import dataclasses
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
from ort_saturation import ort_logits  # noqa: E402
from quantize_224 import CAL, load_data, run_torch  # noqa: E402
from run import cpu, cpu_line, git, loadavg, versions, write_results  # noqa: E402
from suite import SuiteConfig  # noqa: E402

PEERS = ("ORT QOperator u8s8 reduce_range", "ORT QOperator u8s8")


def log(msg: str) -> None:
    print(msg, flush=True)


def parse_variant(text: str) -> tuple[str, dict]:
    """'observer=mse,bias_correction=false' -> (label, QuantizeConfig fields); values as YAML reads them."""
    import yaml

    return text, {k.strip(): yaml.safe_load(v) for k, _, v in (part.partition("=") for part in text.split(","))}


def instance(model_name: str, seed: int, data32, data224, x: np.ndarray, y: np.ndarray,
             variants: list[tuple[str, dict]], pruned: bool = False) -> dict:
    """Build the seed's 224-px model and score every row on `x`; returns {row: correct (bool array)}.
    `pruned`: the suite's edgecnn prune + distill of the trained model (at the main size) is what
    is adapted to 224 px and quantized, as the suite's pruned 224 rows are."""
    cfg = dataclasses.replace(SuiteConfig(), seed=seed)
    t = time.perf_counter()
    trained = suite.train(model_name, data32, cfg, log)
    if pruned:
        trained, info = suite.prune_edgecnn(trained, data32, cfg)
        log(f"    pruned: MACs / {info['macs_ratio']}")
    model, _ = suite.adapt_224(trained, data224, cfg, log, model_name)
    model.eval()
    build_s = time.perf_counter() - t
    correct = {"float": run_torch(model, torch.from_numpy(x)).argmax(1) == y}
    chosen: dict[str, dict] = {}
    example = data224.example_input(1)
    with tempfile.TemporaryDirectory(prefix="qseeds_") as tmp:
        work = Path(tmp)
        for i, (label, fields) in enumerate([("defaults", {}), *variants]):
            q = suite.quantize_edgecnn(model, data224, CAL, test_limit=32, **fields)
            if q.observer_search:    # what the search chose on this instance, from which val figures
                chosen[f"edgecnn PTQ, {label}"] = q.observer_search
            raw = suite.export_onnx(q.model, example, work / f"v{i}.onnx", "int8")
            path, _ = suite.lowered_onnx(raw, work / f"v{i}_ort.onnx", "onnxruntime")
            correct[f"edgecnn PTQ, {label}"] = ort_logits(path, x).argmax(1) == y
        fp32 = suite.export_onnx(model, example, work / "fp32.onnx", "fp32")
        x_cal = data224.tensors("calibration", CAL)[0].numpy()
        for rr in (False, True):
            p = suite.ort_quantize_static(fp32, x_cal, work, ("QOperator", "u8", "s8", rr))
            correct["ORT QOperator u8s8" + (" reduce_range" if rr else "")] = ort_logits(p, x).argmax(1) == y
    log(f"  seed {seed} ({build_s:.0f} s to build): " + "; ".join(f"{k} {100 * v.mean():.1f}" for k, v in correct.items()))
    return correct, chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("mobilenet_v2", "resnet18"), default="mobilenet_v2")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--test", type=int, default=1000, help="test images scored (default 1000, all)")
    ap.add_argument("--variants", nargs="*", default=["weight_bits=7"], metavar="FIELD=VALUE[,...]",
                    help="edgecnn PTQ rows besides the defaults: QuantizeConfig overrides (default: weight_bits=7)")
    ap.add_argument("--pruned", action="store_true",
                    help="each instance pruned first (the suite's edgecnn prune + distill, at the main size)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    t0 = time.perf_counter()
    base = SuiteConfig()
    data32, data224 = load_data(base.size, base), load_data(224, base)
    xt, yt = data224.tensors("test", args.test)
    x, y = xt.numpy(), yt.numpy()
    res = {"command": "PYTHONPATH=. python " + " ".join(sys.argv), "git": git()["commit"][:12], "versions": versions(),
           "cpu": cpu(), "loadavg_start": loadavg(), "model": f"torchvision {args.model}{', pruned (edgecnn prune + distill)' if args.pruned else ''}, suite 224 mode",
           "calibration_images": CAL, "test_images": len(y), "instances": {}}
    variants = [parse_variant(v) for v in args.variants]
    for seed in args.seeds:
        correct, chosen = instance(args.model, seed, data32, data224, x, y, variants, args.pruned)
        rows = {k: {"top1": round(100.0 * float(v.mean()), 2)} for k, v in correct.items()}
        for k, search in chosen.items():
            rows[k]["observer_search"] = search
        for k, v in correct.items():
            if k.startswith("edgecnn"):
                rows[k]["vs"] = {peer: suite.paired_accuracy(v, correct[peer]) for peer in PEERS}
        res["instances"][str(seed)] = rows
    rows = list(next(iter(res["instances"].values())))
    res["mean_top1"] = {k: round(float(np.mean([i[k]["top1"] for i in res["instances"].values()])), 2) for k in rows}
    res["pooled"] = {k: {peer: pooled([i[k]["vs"][peer] for i in res["instances"].values()]) for peer in PEERS}
                     for k in rows if k.startswith("edgecnn")}
    write_results(res, args.out, markdown, t0)


def pooled(pairs: list[dict]) -> dict:
    """Paired comparisons of independent instances pooled: discordant images summed, exact McNemar."""
    n, b, c = (sum(p[k] for p in pairs) for k in ("images", "edgecnn_only", "peer_only"))
    return suite.paired_counts(n, b, c)


def choice_label(search: dict) -> str:
    """'minmax', or 'minmax, bc off' where the search also chose bias correction (since stop 17)."""
    if "bias_correction" not in search:
        return search["chosen"]
    return f"{search['chosen']}, bc {'on' if search['bias_correction'] else 'off'}"


def markdown(res: dict) -> str:
    seeds = list(res["instances"])
    rows = list(res["mean_top1"])
    lines = [f"Measured by `{res['command']}` (git {res['git']}, {res['seconds']:.0f} s; load average "
             f"{res['loadavg_start']} -> {res['loadavg_end']}; {cpu_line(res['cpu'])}).", "",
             f"{res['model']}, one instance per training seed; {res['calibration_images']} calibration images; "
             f"top-1 % on {res['test_images']} test images; in brackets, edgecnn - peer in pp on the same images "
             f"and its McNemar p, against '{PEERS[0]}' / '{PEERS[1]}'.", "",
             "| row | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for k in rows:
        cells = []
        for s in seeds:
            r = res["instances"][s][k]
            vs = " / ".join(f"{v['diff_pp']:+.1f}, p {v['p_value']:.2g}" for v in r.get("vs", {}).values())
            picked = f" [{choice_label(r['observer_search'])}]" if r.get("observer_search") else ""
            cells.append(f"{r['top1']:.1f}{picked}" + (f" ({vs})" if vs else ""))
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {res['mean_top1'][k]:.2f} |")
    if any(r.get("observer_search") for i in res["instances"].values() for r in i.values()):
        lines += ["", "In square brackets: what PTQ's search kept on that instance (most val images whose int8 "
                  "top-1 agrees with the float model's): the observer, and whether it bias-corrected ('bc on' / "
                  "'bc off') where the search chose that too."]
    lines += ["", "Pooled over the instances (discordant images summed; edgecnn - peer, 95% interval, McNemar p):", ""]
    for k, by_peer in res.get("pooled", {}).items():
        lines.append(f"- {k}: " + "; ".join(
            f"vs {peer}: {v['diff_pp']:+.2f} pp ({v['diff_ci95_pp'][0]:+.2f} to {v['diff_ci95_pp'][1]:+.2f}; "
            f"{v['edgecnn_only']} images only edgecnn gets right, {v['peer_only']} only the peer; p {v['p_value']:.2g})"
            for peer, v in by_peer.items()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
