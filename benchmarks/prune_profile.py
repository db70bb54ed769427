"""Why 50%-channel pruning does not turn its MACs ratio into latency: per-op profiles, fp32 and int8.

For each model (default resnet18 and mobilenet_v2 at 224x224x3, random-init torchvision weights,
10 classes as in the suite): edgecnn `prune` (L1, ratio 0.5, round_to --round-to, classifier kept),
then, for the unpruned and the pruned model, the suite's artifacts: fp32 ONNX (edgecnn exporter)
and its OpenVINO IR; edgecnn PTQ (`compress/quantize.py`, the suite's settings, calibration images
from mnist5k at 224) exported as QDQ ONNX and lowered with the presets `onnxruntime-integer` (ORT)
and `openvino` (-> IR).

1. Latency: every artifact opened with `edgecnn.runtimes.open_session` (what the suite times), 1
   thread, batch 1, all of a model's sessions interleaved run by run (order rotating), --runs runs
   after --warmup. OpenVINO fp32 twice: CPU default precision (bf16 on a CPU with avx512_bf16, the
   suite's `ov/fp32` rows) and INFERENCE_PRECISION_HINT f32 (what prune_latency.py times). The runs
   are also cut into blocks of --block runs (the suite's 224 mode times 40) to show how far a
   pruned/unpruned ratio from one such block strays.
2. Profiles, 1 thread: ONNX Runtime `SessionOptions.enable_profiling` (per-node kernel time, median
   over --profile-runs runs) and OpenVINO `PERF_COUNT` (`InferRequest.get_profiling_info`: per-layer
   real time, layer type, exec type). Aggregated by op type; conv layers paired unpruned/pruned with
   their MACs ratio and time ratio; the share of the time spent outside convolutions.
3. A two-part model of the speedup: conv time / conv speedup + rest / rest speedup.

Writes --out (JSON) and the Markdown beside it, atomically. Time the run in a raised autogroup:

    echo -19 > /proc/self/autogroup; PYTHONPATH=. python benchmarks/prune_profile.py
    PYTHONPATH=. python benchmarks/prune_profile.py --models resnet18 --round-to 8 16 --runs 60
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
OUT = HERE / "results" / "prune_profile.json"

CONV_TYPES_ORT = ("Conv", "FusedConv", "QLinearConv", "NhwcFusedConv", "NhwcQLinearConv")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


from run import git, scheduling  # noqa: E402  (benchmarks/run.py: the suite's own records)


# --------------------------------------------------------------------------- artifacts

def load_data(size: int, calibration: int, seed: int = 0):
    from edgecnn.data import DataConfig, load_data as _load

    return _load(DataConfig(source="mnist5k", image_size=size, channels=3, calibration_size=calibration), seed)


def build(name: str, round_to: int | None, ratio: float, data, cal_n: int, work: Path,
          seen: dict | None = None) -> dict[str, Any]:
    """The unpruned and pruned model's artifacts, the suite's way. Returns paths and MACs. `seen`:
    pruned conv widths -> round_to already built; a pruned model with the same widths is not rebuilt."""
    import suite

    from edgecnn.compress import PruneConfig, prune
    from edgecnn.models import ModelConfig, build_model, count_macs

    torch.manual_seed(0)
    example = data.example_input(1)
    model = build_model(ModelConfig(f"torchvision:{name}"), data.num_classes, 3).eval()
    # random-init batch norms leave activations scaled oddly; one pass of statistics on real images
    # makes the calibration ranges (and so the int8 graph) look like a trained model's
    from edgecnn.train import recalibrate_batch_norm
    recalibrate_batch_norm(model, data, batches=2, batch_size=16, seed=0)
    model.eval()
    res = prune(model, PruneConfig(ratio=ratio, finetune_epochs=0, round_to=round_to), example_input=example)
    pm = res.model.eval()
    widths = [m.out_channels for m in pm.modules() if isinstance(m, torch.nn.Conv2d)]
    out: dict[str, Any] = {"macs_unpruned": count_macs(model, tuple(example.shape[1:])),
                           "macs_pruned": count_macs(pm, tuple(example.shape[1:])), "files": {},
                           "pruned_conv_widths": widths}
    out["macs_ratio"] = round(out["macs_unpruned"] / out["macs_pruned"], 3)
    if seen is not None:
        if tuple(widths) in seen:
            out["same_widths_as_round_to"] = seen[tuple(widths)]
            return out
        seen[tuple(widths)] = round_to
    out["macs_ratio"] = round(out["macs_unpruned"] / out["macs_pruned"], 3)
    tag0 = f"{name}_r{round_to}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tag, m in (("unpruned", model), ("pruned", pm)):
            base = work / (f"{name}_unpruned" if tag == "unpruned" else f"{tag0}_pruned")
            f: dict[str, str] = {}
            done = base.with_name(base.name + ".done.json")
            if done.exists():
                out["files"][tag] = json.loads(done.read_text())
                continue
            fp32 = suite.export_onnx(m, example, base.with_name(base.name + "_fp32.onnx"), "fp32")
            f["ort_fp32"] = str(fp32)
            f["ov_fp32"] = str(suite.onnx_to_ir(fp32, base.with_name(base.name + "_fp32.xml")))
            q = suite.quantize_edgecnn(m, data, cal_n, test_limit=16)
            raw = suite.export_onnx(q.model, example, base.with_name(base.name + "_int8_qdq.onnx"), "int8")
            f["ort_int8"] = str(suite.lowered_onnx(raw, base.with_name(base.name + "_int8_ort.onnx"),
                                                   "onnxruntime-integer")[0])
            ovo = suite.lowered_onnx(raw, base.with_name(base.name + "_int8_ov.onnx"), "openvino")[0]
            f["ov_int8"] = str(suite.onnx_to_ir(ovo, base.with_name(base.name + "_int8_ov.xml")))
            done.write_text(json.dumps(f))
            out["files"][tag] = f
    return out


# --------------------------------------------------------------------------- latency

VARIANTS = (  # key -> (file key, runtime, open_session options)
    ("ort_fp32", "ort_fp32", "onnxruntime", {}),
    ("ov_fp32_default", "ov_fp32", "openvino", {}),
    ("ov_fp32_f32", "ov_fp32", "openvino", {"inference_precision": "f32"}),
    ("ort_int8", "ort_int8", "onnxruntime", {}),
    ("ov_int8", "ov_int8", "openvino", {}),
)


def time_interleaved(files: dict[str, dict[str, str]], x: np.ndarray, runs: int, warmup: int, block: int
                     ) -> dict[str, Any]:
    from edgecnn.runtimes import open_session

    live = {}
    for tag, fs in files.items():
        for key, fk, rt, opts in VARIANTS:
            s = open_session(fs[fk], rt, threads=1, **opts)
            live[f"{key}/{tag}"] = s
    for s in live.values():
        for _ in range(warmup):
            s.run(x)
    keys = list(live)
    times: dict[str, list[float]] = {k: [] for k in keys}
    clock = time.perf_counter
    for i in range(runs):
        k0 = i % len(keys)
        for k in keys[k0:] + keys[:k0]:
            t = clock()
            live[k].run(x)
            times[k].append(clock() - t)
    out: dict[str, Any] = {"median_ms": {k: round(1e3 * statistics.median(v), 4) for k, v in times.items()},
                           "p10_ms": {k: round(1e3 * float(np.percentile(v, 10)), 4) for k, v in times.items()},
                           "p90_ms": {k: round(1e3 * float(np.percentile(v, 90)), 4) for k, v in times.items()},
                           "precision": {k: live[k].info.get("options", {}).get("inference_precision")
                                         for k in keys if k.startswith("ov")}}
    sp, blocks = {}, {}
    for key, *_ in VARIANTS:
        u, p = times[f"{key}/unpruned"], times[f"{key}/pruned"]
        sp[key] = round(statistics.median(u) / statistics.median(p), 3)
        nb = len(u) // block
        blocks[key] = [round(statistics.median(u[b * block:(b + 1) * block]) /
                             statistics.median(p[b * block:(b + 1) * block]), 3) for b in range(nb)]
    out["speedup"], out["speedup_per_block"] = sp, blocks
    out["speedup_p10"] = {key: round(float(np.percentile(times[f"{key}/unpruned"], 10))
                                     / float(np.percentile(times[f"{key}/pruned"], 10)), 3) for key, *_ in VARIANTS}
    live.clear()
    return out


# --------------------------------------------------------------------------- profiles

def _ort_weights(optimized: Path) -> dict[str, list[int]]:
    """Conv node name -> weight shape, from the graph ORT runs (`optimized_model_filepath`): the
    profiler does not list prepacked weights among a node's inputs."""
    import onnx

    m = onnx.load(str(optimized))
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type in CONV_TYPES_ORT:
            w = next((inits[i] for i in n.input if len(inits.get(i, [])) == 4), None)
            if w is not None:
                out[n.name] = w
    return out


def _conv_fields(out_shape: list[int] | None, w: list[int] | None) -> dict[str, Any]:
    """MACs (output elements x weight[1:] product; 5-D grouped weights: x weight[2:]) and the kernel's
    shape: cout, cin per group, k."""
    if not out_shape or not w:
        return {"macs": None, "weight": w}
    per_out = w[2:] if len(w) == 5 else w[1:]
    return {"macs": int(np.prod(out_shape) * np.prod(per_out)), "weight": w, "k": int(w[-1]),
            "cin_per_group": int(per_out[0]), "groups": int(w[0]) if len(w) == 5 else None}


class _OrtProfiled:
    def __init__(self, path: str, tmp: Path, tag: str):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.enable_profiling = True
        so.profile_file_prefix = str(tmp / f"{Path(path).stem}_{tag}")
        optimized = tmp / f"{Path(path).stem}_ort_optimized.onnx"
        so.optimized_model_filepath = str(optimized)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.weights = _ort_weights(optimized)
        self.name = self.sess.get_inputs()[0].name
        self.wall: list[float] = []

    def run(self, x: np.ndarray, record: bool) -> None:
        t = time.perf_counter()
        self.sess.run(None, {self.name: x})
        if record:
            self.wall.append((time.perf_counter() - t) * 1e3)

    def result(self, warmup: int) -> dict[str, Any]:
        prof = Path(self.sess.end_profiling())
        events = json.loads(prof.read_text())
        prof.unlink()
        runs = sorted((e["ts"], e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
        runs = runs[warmup:]
        t_first = runs[0][0] if runs else 0
        node_t: dict[str, list[float]] = defaultdict(list)
        info: dict[str, dict] = {}
        per_run = [0.0] * len(runs)
        starts = [r[0] for r in runs]
        import bisect
        for e in events:
            if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < t_first:
                continue
            n = e["name"][:-len("_kernel_time")]
            node_t[n].append(e["dur"] / 1e3)
            per_run[bisect.bisect_right(starts, e["ts"]) - 1] += e["dur"] / 1e3
            if n not in info:
                op = e["args"].get("op_name", "?")
                d = {"op": op}
                if op in CONV_TYPES_ORT:
                    ins = [list(v.values())[0] for v in e["args"].get("input_type_shape", [])]
                    w = ins[1] if len(ins) > 1 and len(ins[1]) == 4 else self.weights.get(n)
                    d.update(_conv_fields(list(e["args"]["output_type_shape"][0].values())[0], w))
                info[n] = d
        nodes = [{"node": n, **info[n], "ms": round(statistics.median(ts), 5)} for n, ts in node_t.items()]
        wall = self.wall
        return {"nodes": nodes, "runs": len(runs),
                "wall_ms": round(statistics.median(wall), 4),
                "model_run_ms": round(statistics.median([r[1] / 1e3 for r in runs]), 4),
                "nodes_sum_ms_per_run": round(statistics.median(per_run), 4),
                "outside_nodes_ms": round(statistics.median([w - s for w, s in zip(wall, per_run)]), 4)}


def _ov_conv_fields(compiled) -> dict[str, dict]:
    out = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        lt = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        if lt not in ("Convolution", "GroupConvolution"):
            continue
        try:
            o = list(op.get_output_partial_shape(0).to_shape())
            w = list(op.input_value(1).get_partial_shape().to_shape())
            out[op.get_friendly_name()] = _conv_fields(o, w)
        except Exception:   # noqa: BLE001
            pass
    return out


class _OvProfiled:
    def __init__(self, path: str, precision: str | None):
        import openvino as ov

        core = ov.Core()
        props: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1, "PERF_COUNT": True}
        if precision:
            props["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = core.compile_model(core.read_model(path), "CPU", props)
        self.req = self.compiled.create_infer_request()
        self.node_t: dict[str, list[float]] = defaultdict(list)
        self.info: dict[str, dict] = {}
        self.wall: list[float] = []
        self.per_run: list[float] = []

    def run(self, x: np.ndarray, record: bool) -> None:
        t = time.perf_counter()
        self.req.infer({0: x})
        dt = (time.perf_counter() - t) * 1e3
        if not record:
            return
        self.wall.append(dt)
        s = 0.0
        for p in self.req.get_profiling_info():
            if p.status != p.Status.EXECUTED:
                continue
            ms = p.real_time.total_seconds() * 1e3
            s += ms
            self.node_t[p.node_name].append(ms)
            self.info.setdefault(p.node_name, {"op": p.node_type, "exec_type": p.exec_type})
        self.per_run.append(s)

    def result(self, warmup: int) -> dict[str, Any]:
        convs = _ov_conv_fields(self.compiled)
        nodes = [{"node": n, **self.info[n], **convs.get(n, {}), "ms": round(statistics.median(ts), 5)}
                 for n, ts in self.node_t.items()]
        return {"nodes": nodes, "runs": len(self.wall), "wall_ms": round(statistics.median(self.wall), 4),
                "nodes_sum_ms_per_run": round(statistics.median(self.per_run), 4),
                "outside_nodes_ms": round(statistics.median([w - s for w, s in zip(self.wall, self.per_run)]), 4)}


def profile_pair(files: dict[str, dict[str, str]], fk: str, rt: str, precision: str | None, x: np.ndarray,
                 runs: int, warmup: int, tmp: Path) -> dict[str, dict]:
    """Unpruned and pruned profiled run by run alternately (a load change hits both alike)."""
    s = {tag: (_OrtProfiled(files[tag][fk], tmp, tag) if rt == "onnxruntime" else _OvProfiled(files[tag][fk], precision))
         for tag in ("unpruned", "pruned")}
    for i in range(warmup + runs):
        for tag in (("unpruned", "pruned") if i % 2 == 0 else ("pruned", "unpruned")):
            s[tag].run(x, i >= warmup)
    return {tag: v.result(warmup) for tag, v in s.items()}


def is_conv(node: dict) -> bool:
    return node["op"] in CONV_TYPES_ORT or node["op"] in ("Convolution", "GroupConvolution")


def conv_kind(node: dict) -> str:
    if node.get("cin_per_group") == 3:
        return "stem conv (3 input channels)"
    if node.get("groups") or (node.get("cin_per_group") == 1 and node.get("k", 1) > 1):
        return "depthwise conv"
    return "1x1 conv" if node.get("k") == 1 else "kxk conv"


def summarize_profile(u: dict, p: dict) -> dict[str, Any]:
    """By op type and conv kind: ms unpruned/pruned, share, speedup; convs vs the rest (other ops and
    the per-call time outside the nodes); conv layers paired unpruned/pruned."""
    def groups(prof, key):
        d: dict[str, dict] = defaultdict(lambda: {"n": 0, "ms": 0.0, "macs": 0})
        for n in prof["nodes"]:
            k = key(n)
            d[k]["n"] += 1
            d[k]["ms"] += n["ms"]
            d[k]["macs"] += n.get("macs") or 0
        return d

    def table(key, with_outside: bool):
        gu, gp = groups(u, key), groups(p, key)
        if with_outside:
            gu["(outside the nodes: per-call overhead)"] = {"n": 1, "ms": u["outside_nodes_ms"], "macs": 0}
            gp["(outside the nodes: per-call overhead)"] = {"n": 1, "ms": p["outside_nodes_ms"], "macs": 0}
        rows = []
        for k in sorted(set(gu) | set(gp), key=lambda k: -(gu.get(k, {}).get("ms", 0))):
            a, b = gu.get(k, {"n": 0, "ms": 0.0, "macs": 0}), gp.get(k, {"n": 0, "ms": 0.0, "macs": 0})
            rows.append({"group": k, "n_unpruned": a["n"], "n_pruned": b["n"], "ms_unpruned": round(a["ms"], 4),
                         "ms_pruned": round(b["ms"], 4), "share_unpruned": round(a["ms"] / tu, 4),
                         "share_pruned": round(b["ms"] / tp, 4),
                         "speedup": round(a["ms"] / b["ms"], 3) if b["ms"] > 0 else None,
                         "macs_ratio": round(a["macs"] / b["macs"], 3) if b["macs"] else None,
                         "gmac_s": [round(a["macs"] / a["ms"] / 1e6, 1) if a["ms"] > 0 and a["macs"] else None,
                                    round(b["macs"] / b["ms"] / 1e6, 1) if b["ms"] > 0 and b["macs"] else None]})
        return rows

    su, sp = sum(n["ms"] for n in u["nodes"]), sum(n["ms"] for n in p["nodes"])
    ou, op_ = max(0.0, u["outside_nodes_ms"]), max(0.0, p["outside_nodes_ms"])
    tu, tp = su + ou, sp + op_
    cu = [n for n in u["nodes"] if is_conv(n)]
    cp = [n for n in p["nodes"] if is_conv(n)]
    conv_u, conv_p = sum(n["ms"] for n in cu), sum(n["ms"] for n in cp)
    macs_u, macs_p = sum(n.get("macs") or 0 for n in cu), sum(n.get("macs") or 0 for n in cp)
    pm = {n["node"]: n for n in cp}
    pairs = [(a, pm[a["node"]]) for a in cu if a["node"] in pm]
    if len(pairs) != len(cu):      # names differ between the two graphs: pair in execution order
        pairs = list(zip(cu, cp))
    layers = []
    for a, b in pairs:
        layers.append({"node": a["node"], "kind": conv_kind(a), "weight": a.get("weight"),
                       "weight_pruned": b.get("weight"), "exec_type": a.get("exec_type"),
                       "exec_type_pruned": b.get("exec_type"), "macs": a.get("macs"), "macs_pruned": b.get("macs"),
                       "ms": a["ms"], "ms_pruned": b["ms"],
                       "macs_ratio": round(a["macs"] / b["macs"], 3) if a.get("macs") and b.get("macs") else None,
                       "time_ratio": round(a["ms"] / b["ms"], 3) if b["ms"] else None,
                       "gmac_s": round(a["macs"] / a["ms"] / 1e6, 1) if a.get("macs") and a["ms"] else None,
                       "gmac_s_pruned": round(b["macs"] / b["ms"] / 1e6, 1) if b.get("macs") and b["ms"] else None})
    rest_u, rest_p = tu - conv_u, tp - conv_p
    return {
        "ms_unpruned": round(tu, 4), "ms_pruned": round(tp, 4), "speedup": round(tu / tp, 3),
        "nodes_ms_unpruned": round(su, 4), "nodes_ms_pruned": round(sp, 4),
        "outside_nodes_ms": [u["outside_nodes_ms"], p["outside_nodes_ms"]],
        "wall_ms": [u["wall_ms"], p["wall_ms"]], "wall_speedup": round(u["wall_ms"] / p["wall_ms"], 3),
        "conv": {"ms_unpruned": round(conv_u, 4), "ms_pruned": round(conv_p, 4), "speedup": round(conv_u / conv_p, 3),
                 "macs_unpruned": macs_u, "macs_pruned": macs_p,
                 "macs_ratio": round(macs_u / macs_p, 3) if macs_p else None,
                 "gmac_s_unpruned": round(macs_u / conv_u / 1e6, 1) if conv_u else None,
                 "gmac_s_pruned": round(macs_p / conv_p / 1e6, 1) if conv_p else None,
                 "share_unpruned": round(conv_u / tu, 4), "share_pruned": round(conv_p / tp, 4)},
        "rest": {"ms_unpruned": round(rest_u, 4), "ms_pruned": round(rest_p, 4),
                 "speedup": round(rest_u / rest_p, 3) if rest_p > 0 else None,
                 "share_unpruned": round(rest_u / tu, 4), "share_pruned": round(rest_p / tp, 4)},
        "by_kind": table(lambda n: conv_kind(n) if is_conv(n) else n["op"], True),
        "by_op": table(lambda n: n["op"] + (f" [{n['exec_type']}]" if n.get("exec_type") else ""), False),
        "conv_layers": layers,
    }


PROFILES = (  # key -> (file key, runtime, OpenVINO precision hint)
    ("ort_fp32", "ort_fp32", "onnxruntime", None),
    ("ov_fp32_default", "ov_fp32", "openvino", None),
    ("ov_fp32_f32", "ov_fp32", "openvino", "f32"),
    ("ort_int8", "ort_int8", "onnxruntime", None),
    ("ov_int8", "ov_int8", "openvino", None),
)


def profiles(files: dict[str, dict[str, str]], x: np.ndarray, runs: int, warmup: int, tmp: Path) -> dict[str, Any]:
    out = {}
    for key, fk, rt, prec in PROFILES:
        raw = profile_pair(files, fk, rt, prec, x, runs, warmup, tmp)
        s = summarize_profile(raw["unpruned"], raw["pruned"])
        s["nodes_unpruned"], s["nodes_pruned"] = raw["unpruned"]["nodes"], raw["pruned"]["nodes"]
        out[key] = s
        log(f"    profile {key}: {s['speedup']}x (wall {s['wall_speedup']}x); conv {s['conv']['speedup']}x for "
            f"{s['conv']['macs_ratio']}x fewer MACs; rest {s['rest']['share_pruned']:.0%} of pruned time, "
            f"{s['rest']['speedup']}x")
    return out


def explain(name: str, key: str, macs_ratio: float, lat: dict, prof: dict) -> dict[str, Any]:
    """Two-part model of the profile: pruned time = conv_u / conv speedup + rest_u / rest speedup."""
    c, r = prof["conv"], prof["rest"]
    tu = prof["ms_unpruned"]
    cs = c["ms_unpruned"] / tu
    ideal = 1 / (cs / c["macs_ratio"] + (1 - cs) / (r["speedup"] or 1))   # convs scaling with their MACs
    kinds = {k["group"]: k for k in prof["by_kind"]}
    stem = kinds.get("stem conv (3 input channels)")
    measured = lat["speedup"][key]
    out = {"model": name, "variant": key, "macs_ratio": macs_ratio, "measured_speedup_median": measured,
           "measured_speedup_p10": lat["speedup_p10"][key], "profile_speedup": prof["speedup"],
           "profile_over_macs_ratio": round(prof["speedup"] / macs_ratio, 3),
           "conv_share_unpruned": round(cs, 3), "conv_share_pruned": c["share_pruned"], "conv_speedup": c["speedup"],
           "conv_macs_ratio": c["macs_ratio"], "conv_gmac_s": [c["gmac_s_unpruned"], c["gmac_s_pruned"]],
           "rest_share_pruned": r["share_pruned"], "rest_speedup": r["speedup"],
           "speedup_if_convs_scaled_with_macs": round(ideal, 3)}
    text = (f"{name} {key}: profile {tu:.2f} -> {prof['ms_pruned']:.2f} ms = {prof['speedup']:.2f}x "
            f"({prof['speedup'] / macs_ratio:.2f} of the {macs_ratio}x MACs ratio; wall clock median {measured:.2f}x, "
            f"p10 {lat['speedup_p10'][key]:.2f}x). Convs {c['ms_unpruned']:.2f} -> {c['ms_pruned']:.2f} ms: "
            f"{c['speedup']:.2f}x for {c['macs_ratio']}x fewer conv MACs ({c['gmac_s_unpruned']} -> "
            f"{c['gmac_s_pruned']} GMAC/s)")
    if stem:
        stem_macs = [next(n["macs"] for n in prof[f"nodes_{t}"] if is_conv(n) and conv_kind(n) == stem["group"])
                     for t in ("unpruned", "pruned")]
        out["stem_share_of_conv_macs"] = [round(stem_macs[0] / c["macs_unpruned"], 4),
                                          round(stem_macs[1] / c["macs_pruned"], 4)]
        out["stem"] = {"share_pruned": stem["share_pruned"], "speedup": stem["speedup"], "macs_ratio": stem["macs_ratio"],
                       "gmac_s": stem["gmac_s"]}
        text += (f", of which the stem (3 input channels) {stem['ms_unpruned']:.2f} -> {stem['ms_pruned']:.2f} ms "
                 f"({stem['speedup']}x for {stem['macs_ratio']}x fewer MACs, {stem['gmac_s'][0]} -> {stem['gmac_s'][1]} "
                 f"GMAC/s; {out['stem_share_of_conv_macs'][0]:.1%} -> {out['stem_share_of_conv_macs'][1]:.1%} of the conv "
                 f"MACs, {stem['share_unpruned']:.0%} -> {stem['share_pruned']:.0%} of the time)")
    text += (f". Everything else (other ops + per-call time outside the nodes) {r['ms_unpruned']:.2f} -> "
             f"{r['ms_pruned']:.2f} ms ({r['speedup']}x), {r['share_unpruned']:.0%} of the unpruned and "
             f"{r['share_pruned']:.0%} of the pruned time. Had the convs sped up by their MACs ratio, the model "
             f"would have sped up {ideal:.2f}x ({ideal / macs_ratio:.2f} of the MACs ratio).")
    # where the pruned time exceeds unpruned / MACs ratio (the time had every part scaled with the MACs)
    excess_total = prof["ms_pruned"] - tu / macs_ratio
    parts = []
    for k in prof["by_kind"]:
        e = k["ms_pruned"] - k["ms_unpruned"] / macs_ratio
        parts.append({"group": k["group"], "excess_ms": round(e, 4),
                      "share_of_excess": round(e / excess_total, 3) if excess_total > 0 else None})
    parts.sort(key=lambda d: -d["excess_ms"])
    out["excess_over_macs_scaling"] = {"ms": round(excess_total, 4), "by_group": parts}
    if excess_total > 0.05 * prof["ms_pruned"]:
        text += (f" Pruned time above unpruned/MACs ratio: {excess_total:.2f} ms, of it " + ", ".join(
            f"{d['group']} {d['excess_ms']:.2f} ms ({d['share_of_excess']:.0%})" for d in parts[:4]
            if d["share_of_excess"] and abs(d["share_of_excess"]) >= 0.03) + ".")
    out["text"] = text
    return out


def markdown(res: dict[str, Any]) -> str:
    L = ["# Pruning vs latency: per-op profiles (benchmarks/prune_profile.py)", "",
         f"Command: `{res['command']}`  ", f"Commit: {res['git']['commit']} (dirty: {res['git']['dirty_files']})  ",
         f"Load average start {res['env']['load_average_at_start']}, end {res['env']['load_average_at_end']}; "
         f"scheduling {res['env']['scheduling']}; {res['seconds']} s.  ",
         f"1 thread, batch 1. Wall clock: {res['runs']} interleaved runs of all variants (median; p10; the range of "
         f"the speedups of blocks of {res['block']} runs). Profiles: {res['profile_runs']} runs, unpruned and pruned "
         "alternating; per node the median over the runs; 'profile ms' = the sum of the node medians + the median "
         "per-call time outside the nodes (robust to load: a preempted run moves one node's sample, not the median).",
         ""]
    for m in res["models"]:
        if "same_widths_as_round_to" in m:
            L += [f"## {m['model']}, round_to {m['round_to']}: the same pruned widths as round_to "
                  f"{m['same_widths_as_round_to']} (MACs ratio {m['macs_ratio']}): not measured again", ""]
            continue
        lat = m["latency"]
        L += [f"## {m['model']}, round_to {m['round_to']}: MACs {m['macs_unpruned'] / 1e6:.0f} M -> "
              f"{m['macs_pruned'] / 1e6:.0f} M ({m['macs_ratio']}x)", "",
              "| variant | wall ms U -> P | wall speedup (/MACs) | p10 speedup | blocks | profile ms U -> P | "
              "profile speedup (/MACs) | conv speedup (conv MACs ratio) | conv GMAC/s U -> P | non-conv share of P | "
              "non-conv speedup | outside-node ms U, P |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, *_ in VARIANTS:
            pr, blk = m["profiles"][key], lat["speedup_per_block"][key]
            c, r = pr["conv"], pr["rest"]
            L.append(f"| {key} | {lat['median_ms'][key + '/unpruned']:.2f} -> {lat['median_ms'][key + '/pruned']:.2f} | "
                     f"{lat['speedup'][key]:.2f} ({lat['speedup'][key] / m['macs_ratio']:.2f}) | "
                     f"{lat['speedup_p10'][key]:.2f} | {min(blk):.2f}-{max(blk):.2f} | "
                     f"{pr['ms_unpruned']:.2f} -> {pr['ms_pruned']:.2f} | {pr['speedup']:.2f} "
                     f"({pr['speedup'] / m['macs_ratio']:.2f}) | {c['speedup']:.2f} ({c['macs_ratio']}) | "
                     f"{c['gmac_s_unpruned']} -> {c['gmac_s_pruned']} | {r['share_pruned']:.0%} | {r['speedup']} | "
                     f"{pr['outside_nodes_ms'][0]:.2f}, {pr['outside_nodes_ms'][1]:.2f} |")
        L += ["", "OpenVINO fp32 precision as compiled: " + ", ".join(f"{k}: {v}" for k, v in lat["precision"].items()), ""]
        for key, pr in m["profiles"].items():
            L += [f"### {m['model']} {key}: by conv kind and op type (profile)", "",
                  "| group | n U/P | ms U | ms P | share U | share P | speedup | MACs ratio | GMAC/s U -> P |",
                  "|---|---|---|---|---|---|---|---|---|"]
            for o in pr["by_kind"]:
                if o["share_unpruned"] < 0.003 and o["share_pruned"] < 0.003:
                    continue
                g = f"{o['gmac_s'][0]} -> {o['gmac_s'][1]}" if o["gmac_s"][0] else ""
                L.append(f"| {o['group']} | {o['n_unpruned']}/{o['n_pruned']} | {o['ms_unpruned']:.3f} | "
                         f"{o['ms_pruned']:.3f} | {o['share_unpruned']:.1%} | {o['share_pruned']:.1%} | {o['speedup']} | "
                         f"{o['macs_ratio'] or ''} | {g} |")
            execs = sorted({f"{o['group']}" for o in pr["by_op"] if "[" in o["group"]})
            if execs:
                L += ["", "Exec types: " + "; ".join(execs)]
            L.append("")
            if key in ("ort_int8", "ov_int8") or (key == "ov_fp32_default" and len(pr["conv_layers"]) <= 25):
                L += ["| conv layer | weight U -> P | exec type P | MACs ratio | time ratio | GMAC/s U | GMAC/s P |",
                      "|---|---|---|---|---|---|---|"]
                for c in pr["conv_layers"]:
                    L.append(f"| {c['node'][-32:]} | {c['weight']} -> {c['weight_pruned']} | {c['exec_type_pruned'] or ''} | "
                             f"{c['macs_ratio']} | {c['time_ratio']} | {c['gmac_s']} | {c['gmac_s_pruned']} |")
                L.append("")
        L += ["### Explanation", ""] + [f"- {e['text']}" for e in m["explanations"]] + [""]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    ap.add_argument("--round-to", nargs="+", type=int, default=[8],
                    help="prune's round_to values to compare (each a pruned model; 0: off)")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--calibration", type=int, default=64, help="PTQ calibration images")
    ap.add_argument("--runs", type=int, default=120, help="interleaved timed runs per session")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--block", type=int, default=40, help="runs per block for the per-block speedups")
    ap.add_argument("--profile-runs", type=int, default=30)
    ap.add_argument("--work", type=Path, default=None, help="artifact folder (default: a temporary one); reused")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import openvino as ov

    from edgecnn.io import write_json, write_text

    t0 = time.time()
    git_at_start = git()
    env = {"load_average_at_start": loadavg(), "scheduling": scheduling(), "onnxruntime": ort.__version__,
           "openvino": ov.get_version(), "torch": torch.__version__, "python": platform.python_version(),
           "cpu_count": os.cpu_count()}
    work = args.work or Path(tempfile.mkdtemp(prefix="prune_profile_"))
    work.mkdir(parents=True, exist_ok=True)
    data = load_data(args.size, args.calibration)
    x = data.example_input(1).numpy().astype(np.float32)
    models = []
    for name in args.models:
        seen: dict = {}
        for rt in args.round_to:
            r = None if rt == 0 else rt
            log(f"{name} round_to {r}: build")
            b = build(name, r, args.ratio, data, args.calibration, work, seen)
            if "same_widths_as_round_to" in b:
                log(f"{name} round_to {r}: the same pruned widths as round_to {b['same_widths_as_round_to']}: skipped")
                models.append({"model": name, "round_to": r, "macs_ratio": b["macs_ratio"],
                               "same_widths_as_round_to": b["same_widths_as_round_to"]})
                continue
            log(f"{name}: MACs ratio {b['macs_ratio']}; timing")
            lat = time_interleaved(b["files"], x, args.runs, args.warmup, args.block)
            log(f"{name}: speedups {lat['speedup']}")
            prof = profiles(b["files"], x, args.profile_runs, 5, work)
            expl = [explain(name, k, b["macs_ratio"], lat, prof[k]) for k in prof]
            models.append({"model": name, "round_to": r, "pruned_conv_widths": b["pruned_conv_widths"],
                           "macs_unpruned": b["macs_unpruned"],
                           "macs_pruned": b["macs_pruned"], "macs_ratio": b["macs_ratio"], "latency": lat,
                           "profiles": prof, "explanations": expl, "load_average": loadavg()})
    env["load_average_at_end"] = loadavg()
    res = {"benchmark": "prune_profile",
           "command": "PYTHONPATH=. python benchmarks/prune_profile.py " + " ".join(
               argv if argv is not None else sys.argv[1:]),
           "git": git_at_start, "env": env, "runs": args.runs, "warmup": args.warmup, "block": args.block,
           "profile_runs": args.profile_runs, "ratio": args.ratio, "size": args.size,
           "seconds": round(time.time() - t0), "models": models}
    write_json(args.out, res)
    write_text(args.out.with_suffix(".md"), markdown(res))
    log(f"wrote {args.out} and {args.out.with_suffix('.md')} ({res['seconds']} s)")
    return res


if __name__ == "__main__":
    main()
