"""Per-layer latency tables: what each channel count of each prunable layer costs on one runtime.

MACs are a poor proxy for latency: a depthwise conv is memory-bound, a 1x1 conv on a small map is
dominated by fixed per-op cost, and SIMD kernels work in blocks of channels, so latency moves in
steps. This module measures instead of counting (the lookup-table approach of NetAdapt, Yang et
al., 2018):

  layers    every Conv/Linear the example input reaches, with its input size, and which of its
            channel axes pruning can change: Torch-Pruning's dependency graph groups them (the same
            groups `prune` cuts), never re-derived here;
  table     each layer rebuilt alone as a tiny ONNX model (Conv + BatchNormalization + Relu, or
            Gemm) at the layer's input size, timed in the target runtime (batch 1, 1 thread by
            default) on a grid of (input, output) widths; plus an output-width scan in steps of 8
            at full input width, from which each group's `round_to` is chosen (the widths where
            latency jumps). Cached as JSON keyed by runtime, its version, CPU and threads; entries
            are keyed by layer shape, so models sharing a layer shape share the measurement;
  plan      per-group keep widths for a target (MACs ratio, latency ratio or share of channels),
            chosen greedily one round_to step at a time by predicted latency saved per accuracy
            lost (a sensitivity scan when there is one, else latency alone);
  predict   model latency = sum of the layers' table latencies (bilinear in the grid) + a measured
            remainder (the full model's measured latency minus its layers' sum: pooling, adds,
            copies), so a prediction can be set against a measurement.

A group whose cut buys no predicted latency on the chosen runtime is named in a warning and in
`LatencyPlan.no_gain`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecnn.errors import EdgecnnError
from edgecnn.io import write_json
from edgecnn.models import observing
from edgecnn.registry import Registry

__all__ = ["LayerSpec", "LatencyTable", "LatencyPlan", "TIMERS", "model_layers", "channel_groups",
           "build_table", "choose_round_to", "plan_widths", "predict_ms", "widths_of", "layer_breakdown",
           "time_onnx_file", "measure_models", "cpu_name"]

BASE = 8           # width step of the output scan, and the smallest round_to considered
ROUND_TO_CANDIDATES = (8, 16, 32, 64)


# ---------------------------------------------------------------------------------------------
# Layers


@dataclass
class LayerSpec:
    name: str                    # module name in the model
    kind: str                    # 'conv' | 'linear'
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    in_hw: tuple[int, int] = (1, 1)     # input feature map height, width (batch 1)
    out_hw: tuple[int, int] = (1, 1)
    in_prunable: bool = False           # a pruning group changes the input channels
    out_prunable: bool = False          # ... the output channels

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups == self.in_channels == self.out_channels and self.groups > 1

    @property
    def modelled(self) -> bool:
        """Grouped (non-depthwise) convs are left to the remainder: their widths move in steps of groups."""
        return self.kind == "linear" or self.groups == 1 or self.depthwise

    def key(self) -> str:
        """The table key: the layer's shape, not its name (so equal layers share a measurement)."""
        if self.kind == "linear":
            return f"linear {self.in_channels}->{self.out_channels}"
        g = "dw" if self.depthwise else f"g{self.groups}"
        return (f"conv {self.in_channels}->{self.out_channels} k{self.kernel[0]}x{self.kernel[1]} "
                f"s{self.stride[0]}x{self.stride[1]} p{self.padding[0]}x{self.padding[1]} "
                f"d{self.dilation[0]}x{self.dilation[1]} {g} in{self.in_hw[0]}x{self.in_hw[1]}")

    def macs(self, cin: int | None = None, cout: int | None = None) -> int:
        cin = self.in_channels if cin is None else cin
        cout = self.out_channels if cout is None else cout
        if self.kind == "linear":
            return cin * cout
        per_out = (cin // cout if self.depthwise else cin // self.groups) * self.kernel[0] * self.kernel[1]
        return cout * max(1, per_out) * self.out_hw[0] * self.out_hw[1]

    def in_axis(self) -> list[int]:
        return _grid(self.in_channels) if self.in_prunable and not self.depthwise else [self.in_channels]

    def out_axis(self) -> list[int]:
        return _grid(self.out_channels) if (self.out_prunable or (self.depthwise and self.in_prunable)) \
            else [self.out_channels]


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def model_layers(model: nn.Module, example: torch.Tensor) -> dict[str, LayerSpec]:
    """{name: LayerSpec} for each Conv2d and Linear the example input reaches, in execution order."""
    specs: dict[str, LayerSpec] = {}
    handles = []

    def hook(name):
        def fn(m, inputs, out):
            x = inputs[0]
            if name in specs or not isinstance(x, torch.Tensor):
                return
            if isinstance(m, nn.Conv2d):
                if not isinstance(m.padding, tuple) or m.padding_mode != "zeros":
                    return   # 'same' padding strings or reflect/circular pads: left to the remainder
                specs[name] = LayerSpec(name, "conv", m.in_channels, m.out_channels, _pair(m.kernel_size),
                                        _pair(m.stride), _pair(m.padding), _pair(m.dilation), m.groups,
                                        tuple(x.shape[-2:]), tuple(out.shape[-2:]))
            elif isinstance(m, nn.Linear) and x.dim() == 2:
                specs[name] = LayerSpec(name, "linear", m.in_features, m.out_features)
        return fn

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(hook(name)))
    with observing(model, handles):
        model(example)
    return specs


def channel_groups(model: nn.Module, example: torch.Tensor, ignored: Sequence[nn.Module]
                   ) -> dict[str, dict[str, Any]]:
    """{group root name: {'width', 'out': [layers], 'in': [layers]}} from Torch-Pruning's graph.

    'out' layers lose output channels when the group is cut, 'in' layers lose input channels; a
    depthwise conv appears in 'out' (its input and output go together).
    """
    import torch_pruning as tp

    from edgecnn.compress.prune import _tp_call

    m2n = {m: n for n, m in model.named_modules()}
    dg = _tp_call("tracing the model's channel dependencies",
                  lambda: tp.DependencyGraph().build_dependency(model, example_inputs=example))
    out: dict[str, dict[str, Any]] = {}
    for group in dg.get_all_groups(ignored_layers=list(ignored),
                                   root_module_types=[nn.modules.conv._ConvNd, nn.Linear]):
        root = group[0].dep.target.module
        entry = {"width": int(dg.get_out_channels(root)), "out": [], "in": []}
        for dep, _idxs in group:
            m = dep.target.module
            if not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or m not in m2n:
                continue
            side = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
            if m2n[m] not in entry[side]:
                entry[side].append(m2n[m])
        out[m2n[root]] = entry
    return out


def _mark_prunable(specs: dict[str, LayerSpec], groups: dict[str, dict[str, Any]]) -> None:
    for g in groups.values():
        for n in g["out"]:
            if n in specs:
                specs[n].out_prunable = True
        for n in g["in"]:
            if n in specs:
                specs[n].in_prunable = True


def _grid(width: int, points: int = 8) -> list[int]:
    """Table widths along one axis: `points` roughly even steps, multiples of 8, always the full width."""
    if width <= BASE:
        return [width]
    ws = {min(width, max(BASE, int(math.ceil(width * k / points / BASE)) * BASE)) for k in range(1, points + 1)}
    return sorted(ws | {width})


def _scan_widths(width: int) -> list[int]:
    return sorted({*range(BASE, width + 1, BASE), width}) if width > BASE else [width]


# ---------------------------------------------------------------------------------------------
# Tiny models and timers


def _layer_onnx(spec: LayerSpec, cin: int, cout: int, path: Path) -> tuple[int, ...]:
    """Write the layer alone at (cin, cout) as ONNX; returns the input shape."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes = [], []
    if spec.kind == "linear":
        shape = (1, cin)
        inits += [numpy_helper.from_array(rng.standard_normal((cout, cin), dtype=np.float32) * 0.05, "W"),
                  numpy_helper.from_array(np.zeros(cout, np.float32), "B")]
        nodes.append(helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1))
        out_shape = (1, cout)
    else:
        groups = cout if spec.depthwise else spec.groups
        cin = cout if spec.depthwise else cin
        shape = (1, cin, *spec.in_hw)
        kh, kw = spec.kernel
        inits += [numpy_helper.from_array(
            rng.standard_normal((cout, cin // groups, kh, kw), dtype=np.float32) * 0.05, "W")]
        for n, v in (("scale", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0)):
            inits.append(numpy_helper.from_array(np.full(cout, v, np.float32), n))
        nodes += [helper.make_node("Conv", ["x", "W"], ["c"], kernel_shape=[kh, kw], strides=list(spec.stride),
                                   pads=[*spec.padding, *spec.padding], dilations=list(spec.dilation),
                                   group=groups),
                  helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"]),
                  helper.make_node("Relu", ["b"], ["y"])]
        out_shape = (1, cout, *spec.out_hw)
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8   # readable by every ONNX Runtime and OpenVINO in use
    onnx.save(model, str(path))
    return shape


def _point_ms(run: Callable[[], Any], runs: int, warmup: int) -> float:
    """Lower quartile of `runs` timings: load on a shared machine only ever adds time, so the lower
    quartile is a steadier estimate of the layer's own cost than the median (whole models, which
    the table is checked against, are reported with medians and p10)."""
    for _ in range(warmup):
        run()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        ts.append((time.perf_counter() - t0) * 1e3)
    return sorted(ts)[(len(ts) - 1) // 4]


def _ort_runner(path: Path, x: np.ndarray, threads: int) -> Callable[[], Any]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    return lambda: sess.run(None, feed)


_OV_CORE = None


def _ov_runner(path: Path, x: np.ndarray, threads: int) -> Callable[[], Any]:
    import openvino as ov

    global _OV_CORE
    if _OV_CORE is None:
        _OV_CORE = ov.Core()
    # f32: the CPU plugin would otherwise pick bf16 on CPUs with bf16 units, a different kernel set.
    compiled = _OV_CORE.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                         "PERFORMANCE_HINT": "LATENCY",
                                                         "INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    return lambda: req.infer({0: x})


def _runtime_version(runtime: str) -> str:
    if runtime == "onnxruntime":
        import onnxruntime as ort
        return ort.__version__
    import openvino as ov
    return ov.get_version()


# runtime name -> (ONNX path, input array, threads) -> zero-argument run function
TIMERS: Registry[Callable[[Path, np.ndarray, int], Callable[[], Any]]] = Registry("latency runtime")
TIMERS.register("onnxruntime")(_ort_runner)
TIMERS.register("openvino")(_ov_runner)


def time_onnx_file(path: Path, shape: Sequence[int], runtime: str, threads: int = 1, runs: int = 15,
                   warmup: int = 3) -> float:
    """Milliseconds of one batch in `runtime` (lower quartile of `runs`, see _point_ms)."""
    x = np.random.default_rng(0).standard_normal(tuple(shape), dtype=np.float32)
    return _point_ms(TIMERS.get(runtime, key="latency_runtime")(path, x, threads), runs, warmup)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------
# The table


@dataclass
class LatencyTable:
    runtime: str
    threads: int
    cpu: str
    version: str = ""
    # layer key -> {"grid": {"cin,cout": ms}, "scan": {"cout": ms}}
    entries: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    measured: int = 0           # points timed by the last build (0: all from the cache)

    def cache_name(self) -> str:
        def slug(text: str, n: int) -> str:   # OpenVINO's version has '/' in it; CPU names have spaces
            return "".join(c if c.isalnum() or c in ".-" else "-" for c in text).strip("-").lower()[:n]
        return f"latency_{self.runtime}-{slug(self.version, 32)}_{slug(self.cpu, 40) or 'cpu'}_{self.threads}t.json"

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "threads": self.threads, "cpu": self.cpu, "version": self.version,
                "entries": self.entries}

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        d = json.loads(Path(path).read_text())
        return cls(d["runtime"], int(d["threads"]), d["cpu"], d.get("version", ""), d.get("entries", {}))

    def lookup(self, spec: LayerSpec, cin: int, cout: int) -> float:
        """Milliseconds of `spec` at (cin, cout), bilinear between the grid's widths."""
        if spec.depthwise:
            cin = cout
        grid = self.entries[spec.key()]["grid"]
        pts = {tuple(int(v) for v in k.split(",")): t for k, t in grid.items()}
        ins = sorted({p[0] for p in pts})
        outs = sorted({p[1] for p in pts})

        def bracket(axis: list[int], v: int) -> tuple[int, int, float]:
            if len(axis) == 1 or v <= axis[0]:
                lo = axis[0]
                hi = axis[1] if len(axis) > 1 else axis[0]
            elif v >= axis[-1]:
                lo, hi = axis[-2], axis[-1]
            else:
                i = next(i for i, a in enumerate(axis) if a >= v)
                lo, hi = axis[i - 1], axis[i]
            w = 0.0 if hi == lo else (v - lo) / (hi - lo)
            return lo, hi, w

        if spec.depthwise:   # one axis: the grid holds (c, c)
            lo, hi, w = bracket(outs, cout)
            return max(0.0, pts[(lo, lo)] * (1 - w) + pts[(hi, hi)] * w)
        i0, i1, wi = bracket(ins, cin)
        o0, o1, wo = bracket(outs, cout)
        v = (pts[(i0, o0)] * (1 - wi) * (1 - wo) + pts[(i1, o0)] * wi * (1 - wo)
             + pts[(i0, o1)] * (1 - wi) * wo + pts[(i1, o1)] * wi * wo)
        return max(0.0, v)

    def scan(self, spec: LayerSpec) -> dict[int, float]:
        return {int(k): v for k, v in self.entries.get(spec.key(), {}).get("scan", {}).items()}


def build_table(specs: dict[str, LayerSpec], runtime: str = "onnxruntime", threads: int = 1, *,
                cache_dir: str | Path | None = None, scan: bool = True, runs: int = 15, warmup: int = 3,
                timer: Callable[[LayerSpec, int, int], float] | None = None, version: str | None = None,
                cpu: str | None = None) -> LatencyTable:
    """Measure every modelled layer on its grid (and output scan), reusing the cache under `cache_dir`.

    `timer(spec, cin, cout) -> ms` replaces the runtime (tests; another device's agent).
    """
    TIMERS.get(runtime, key="latency_runtime")
    version = version if version is not None else (_runtime_version(runtime) if timer is None else "")
    table = LatencyTable(runtime, threads, cpu or cpu_name(), version)
    path = Path(cache_dir) / table.cache_name() if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            table.entries = LatencyTable.load(path).entries
        except (ValueError, KeyError) as e:
            warnings.warn(f"latency table cache '{path}' is unreadable ({e}); measuring again", stacklevel=2)
    tmp = Path(tempfile.mkdtemp(prefix="edgecnn_lat_"))

    def measure(spec: LayerSpec, cin: int, cout: int) -> float:
        table.measured += 1
        if timer is not None:
            return float(timer(spec, cin, cout))
        f = tmp / "layer.onnx"
        shape = _layer_onnx(spec, cin, cout, f)
        return time_onnx_file(f, shape, runtime, threads, runs, warmup)

    try:
        for spec in specs.values():
            if not spec.modelled:
                continue
            e = table.entries.setdefault(spec.key(), {"grid": {}, "scan": {}})
            for cin in spec.in_axis():
                for cout in spec.out_axis():
                    k = f"{cout if spec.depthwise else cin},{cout}"
                    if k not in e["grid"]:
                        e["grid"][k] = round(measure(spec, cin, cout), 5)
            if scan and spec.out_prunable:
                for cout in _scan_widths(spec.out_channels):
                    if str(cout) not in e["scan"]:
                        e["scan"][str(cout)] = round(measure(spec, spec.in_channels, cout), 5)
            if path is not None and table.measured:
                write_json(path, table.to_dict())   # after each layer: an interrupted build keeps its work
    finally:
        for f in tmp.glob("*"):
            f.unlink()
        tmp.rmdir()
    return table


# ---------------------------------------------------------------------------------------------
# round_to, prediction, planning


def choose_round_to(curve: dict[int, float], width: int, base: int = BASE,
                    candidates: Sequence[int] = ROUND_TO_CANDIDATES, tol: float = 0.05) -> int:
    """Largest candidate r (a multiple of base) for which rounding a width up to a multiple of r
    costs no latency: t(ceil_r(w)) <= (1 + tol) t(w) for at least 3/4 of the scanned widths.

    When latency steps every 16 channels, widths 8 and 16 cost the same, so keeping multiples of
    16 loses nothing and a cut of 8 channels that buys nothing is never planned. A smooth curve
    gives `base`.
    """
    pts = {w: t for w, t in curve.items() if w % base == 0 and t > 0}
    best = base
    for r in sorted(c for c in candidates if c % base == 0 and c > base):
        if r > width // 2 or width % r:
            continue
        ratios = [pts[min(width, -(-w // r) * r)] / t for w, t in pts.items()
                  if min(width, -(-w // r) * r) in pts]
        if len(ratios) >= 2 and sorted(ratios)[int(0.75 * (len(ratios) - 1))] <= 1 + tol:
            best = r
        else:
            break
    return best


def widths_of(model: nn.Module, specs: dict[str, LayerSpec]) -> dict[str, tuple[int, int]]:
    """{layer: (in, out) channels} as they are in `model` (e.g. after pruning)."""
    mods = dict(model.named_modules())
    out = {}
    for n in specs:
        m = mods.get(n)
        if isinstance(m, nn.Conv2d):
            out[n] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            out[n] = (m.in_features, m.out_features)
    return out


def _layer_widths(specs: dict[str, LayerSpec], groups: dict[str, dict[str, Any]], keep: dict[str, int]
                  ) -> dict[str, tuple[int, int]]:
    w = {n: [s.in_channels, s.out_channels] for n, s in specs.items()}
    for g, e in groups.items():
        for n in e["out"]:
            if n in w:
                w[n][1] = keep[g]
                if specs[n].depthwise:
                    w[n][0] = keep[g]
        for n in e["in"]:
            if n in w and not specs[n].depthwise:
                w[n][0] = keep[g]
    return {n: (a, b) for n, (a, b) in w.items()}


def layer_ms(table: LatencyTable, specs: dict[str, LayerSpec], widths: dict[str, tuple[int, int]]
             ) -> dict[str, float]:
    """{layer: table ms} at the given widths (full width for a layer not in `widths`); unmodelled
    layers are left out (they are in the remainder)."""
    out = {}
    for n, s in specs.items():
        if s.modelled and s.key() in table.entries:
            cin, cout = widths.get(n, (s.in_channels, s.out_channels))
            out[n] = table.lookup(s, cin, cout)
    return out


def predict_ms(table: LatencyTable, specs: dict[str, LayerSpec], widths: dict[str, tuple[int, int]],
               remainder_ms: float = 0.0) -> float:
    return sum(layer_ms(table, specs, widths).values()) + remainder_ms


def layer_breakdown(table: LatencyTable, specs: dict[str, LayerSpec], widths: dict[str, tuple[int, int]]
                    ) -> list[dict[str, Any]]:
    """Per layer: table ms and MACs at full and at the given widths, and both ratios."""
    full = layer_ms(table, specs, {})
    now = layer_ms(table, specs, widths)
    rows = []
    for n, t0 in full.items():
        s = specs[n]
        cin, cout = widths.get(n, (s.in_channels, s.out_channels))
        m0, m1 = s.macs(), s.macs(cin, cout)
        rows.append({"layer": n, "kind": "depthwise" if s.depthwise else s.kind, "in_hw": list(s.in_hw),
                     "channels": [s.in_channels, s.out_channels], "channels_pruned": [cin, cout],
                     "ms": round(t0, 4), "ms_pruned": round(now[n], 4), "macs": m0, "macs_pruned": m1,
                     "macs_ratio": round(m0 / max(1, m1), 3), "speedup": round(t0 / max(1e-9, now[n]), 3)})
    return rows


@dataclass
class LatencyPlan:
    ratios: dict[str, float]            # group root -> share of channels to remove (what prune cuts)
    keep: dict[str, int]                # group root -> channels kept
    round_to: dict[str, int]            # group root -> channel step chosen from the table
    target: dict[str, Any]              # {'kind': 'macs'|'latency'|'channels', 'value', 'reached'}
    predicted_ms_before: float          # table sum + remainder (the remainder is 0 without a measurement)
    predicted_ms_after: float
    macs_ratio: float                   # analytic conv/linear MACs, full / planned
    no_gain: list[str] = field(default_factory=list)   # groups cut without predicted latency gain
    ranking: str = "latency"            # 'latency' | 'latency/sensitivity'

    @property
    def predicted_speedup(self) -> float:
        return self.predicted_ms_before / max(1e-9, self.predicted_ms_after)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["predicted_speedup"] = round(self.predicted_speedup, 4)
        return d


def plan_widths(table: LatencyTable, specs: dict[str, LayerSpec], groups: dict[str, dict[str, Any]], *,
                target: tuple[str, float], max_ratio: float = 0.9, round_to: dict[str, int] | None = None,
                drop: Callable[[str, float], float] | None = None, remainder_ms: float = 0.0,
                gain_eps: float = 0.01) -> LatencyPlan:
    """Greedy per-group widths: remove one round_to step at a time from the group with the best
    predicted latency saved per accuracy lost, until `target` is reached.

    target: ('macs', r) MACs fall r-fold; ('latency', r) predicted latency falls r-fold;
    ('channels', s) share s of the groups' channels removed (channel-weighted, as `ratio`).
    drop(group, ratio) -> accuracy drop in points (a sensitivity scan); None ranks by latency
    alone. Ties fall to MACs saved, then the group name (the plan is deterministic). A group
    whose step saves less than `gain_eps` of its layers' time is "no gain": cut only when nothing
    better is left, and listed in `no_gain`.
    """
    kind, value = target
    if kind not in ("macs", "latency", "channels"):
        raise EdgecnnError(f"latency plan: unknown target '{kind}'; use macs, latency or channels")
    round_to = round_to or {}
    keep = {g: e["width"] for g, e in groups.items()}
    members = {g: [n for n in (*e["out"], *e["in"]) if n in specs] for g, e in groups.items()}
    full_w = _layer_widths(specs, groups, keep)
    t_layers = layer_ms(table, specs, full_w)
    macs_layers = {n: s.macs(*full_w[n]) for n, s in specs.items()}
    macs0 = sum(macs_layers.values())
    t0 = sum(t_layers.values()) + remainder_ms
    total_ch = sum(e["width"] for e in groups.values()) or 1

    def reached() -> bool:
        if kind == "macs":
            return macs0 / max(1, sum(macs_layers.values())) >= value
        if kind == "latency":
            return t0 / max(1e-9, sum(t_layers.values()) + remainder_ms) >= value
        return sum(groups[g]["width"] - k for g, k in keep.items()) / total_ch >= value

    cut_without_gain: set[str] = set()
    while not reached():
        best = None
        for g, e in groups.items():
            step = round_to.get(g, BASE)
            new = keep[g] - step
            if new < 1 or (e["width"] - new) / e["width"] > max_ratio + 1e-9:
                continue
            trial = dict(keep)
            trial[g] = new
            w = _layer_widths(specs, {g: e}, trial)
            dt = sum(t_layers.get(n, 0.0) - table.lookup(specs[n], *w[n]) for n in members[g]
                     if n in t_layers)
            dm = sum(macs_layers[n] - specs[n].macs(*w[n]) for n in members[g])
            base_t = sum(t_layers.get(n, 0.0) for n in members[g]) or 1e-9
            gain = dt > gain_eps * base_t * step / e["width"]
            if drop is not None:
                r0, r1 = 1 - keep[g] / e["width"], 1 - new / e["width"]
                da = max(0.0, drop(g, r1) - drop(g, r0))
                score = dt / max(da, 1e-3)
            else:
                score = dt
            key = (gain, score if gain else 0.0, dm, g)
            if best is None or key > best[0]:
                best = (key, g, new, w, gain)
        if best is None:
            break
        _, g, new, w, gain = best
        keep[g] = new
        for n in members[g]:
            if n in t_layers:
                t_layers[n] = table.lookup(specs[n], *w[n])
            macs_layers[n] = specs[n].macs(*w[n])
        if not gain:
            cut_without_gain.add(g)
    ratios = {g: round(1 - (k + 0.5) / groups[g]["width"], 6) if k < groups[g]["width"] else 0.0
              for g, k in keep.items()}
    # k + 0.5: Torch-Pruning keeps int(width * (1 - ratio)) channels, so this keeps exactly k.
    plan = LatencyPlan(ratios, keep, {g: round_to.get(g, BASE) for g in groups},
                       {"kind": kind, "value": value, "reached": reached()}, round(t0, 4),
                       round(sum(t_layers.values()) + remainder_ms, 4),
                       round(macs0 / max(1, sum(macs_layers.values())), 4),
                       sorted(cut_without_gain), "latency/sensitivity" if drop is not None else "latency")
    if plan.no_gain:
        warnings.warn(f"prune: cutting {', '.join(plan.no_gain)} buys no predicted latency on {table.runtime} "
                      f"({table.threads} thread(s)); they were cut only to reach the {kind} target",
                      stacklevel=2)
    return plan


def no_gain_groups(table: LatencyTable, specs: dict[str, LayerSpec], groups: dict[str, dict[str, Any]],
                   keep: dict[str, int], eps: float = 0.01) -> list[str]:
    """Groups that were cut (keep < width) whose layers are predicted no faster (< eps saved)."""
    out = []
    for g, e in groups.items():
        if keep.get(g, e["width"]) >= e["width"]:
            continue
        w = _layer_widths(specs, {g: e}, {g: keep[g]})
        names = [n for n in (*e["out"], *e["in"]) if n in specs and specs[n].modelled and specs[n].key()
                 in table.entries]
        t_full = sum(table.lookup(specs[n], specs[n].in_channels, specs[n].out_channels) for n in names)
        t_cut = sum(table.lookup(specs[n], *w[n]) for n in names)
        if t_full - t_cut <= eps * t_full:
            out.append(g)
    return out


# ---------------------------------------------------------------------------------------------
# Whole models: export and interleaved timing


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=True, verbose=False)
    return path


def measure_models(paths: dict[str, Path], shape: Sequence[int], runtime: str, threads: int = 1,
                   runs: int = 50, warmup: int = 5) -> dict[str, dict[str, float]]:
    """Median/p10/p90 ms per ONNX file, the files run interleaved (order swapped every run) so
    that a load change hits them alike."""
    x = np.random.default_rng(0).standard_normal(tuple(shape), dtype=np.float32)
    runners = {k: TIMERS.get(runtime, key="latency_runtime")(p, x, threads) for k, p in paths.items()}
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + runs):
        for n in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            runners[n]()
            if i >= warmup:
                times[n].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for n, ts in times.items():
        ts = sorted(ts)
        out[n] = {"median_ms": round(statistics.median(ts), 4), "p10_ms": round(ts[len(ts) // 10], 4),
                  "p25_ms": round(ts[(len(ts) - 1) // 4], 4),
                  "p90_ms": round(ts[(9 * len(ts)) // 10], 4), "runs": len(ts)}
    return out


def model_digest(specs: dict[str, LayerSpec]) -> str:
    return hashlib.sha256("|".join(s.key() for s in specs.values()).encode()).hexdigest()[:12]


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ---------------------------------------------------------------------------------------------
# One model on one runtime: what prune() and the benchmark use


@dataclass
class LatencyContext:
    specs: dict[str, LayerSpec]
    groups: dict[str, dict[str, Any]]
    table: LatencyTable
    input_shape: tuple[int, ...]
    full_ms: float | None = None        # the whole unpruned model, measured in the runtime (lower quartile,
    # the table's statistic, so that load inflates neither side of the difference below)
    remainder_ms: float = 0.0           # full_ms minus the table's layer sum (pooling, adds, copies)
    onnx_path: Path | None = None

    def round_to(self, base: int | None) -> dict[str, int]:
        """Per group: choose_round_to on the summed output scans of the layers the group narrows."""
        out = {}
        base = base or 1
        for g, e in self.groups.items():
            curve: dict[int, float] = {}
            for n in e["out"]:
                s = self.specs.get(n)
                if s is None:
                    continue
                for w, t in self.table.scan(s).items():
                    curve[w] = curve.get(w, 0.0) + t
            step = max(BASE, base) if base > 1 else BASE
            r = choose_round_to(curve, e["width"], step) if curve else step
            out[g] = r if r % base == 0 else base
        return out

    def keep_of(self, model: nn.Module) -> dict[str, int]:
        mods = dict(model.named_modules())
        out = {}
        for g in self.groups:
            m = mods.get(g)
            out[g] = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features if isinstance(m, nn.Linear) \
                else self.groups[g]["width"]
        return out

    def predicted_ms(self, widths: dict[str, tuple[int, int]] | None = None) -> float:
        return predict_ms(self.table, self.specs, widths or {}, self.remainder_ms)


def prepare(model: nn.Module, example: torch.Tensor, ignored: Sequence[nn.Module], runtime: str = "onnxruntime",
            threads: int = 1, *, cache_dir: str | Path | None = None, measure_full: bool = True,
            workdir: Path | None = None, runs: int = 15) -> LatencyContext:
    """Layers, groups and the table for `model` on `runtime`; with measure_full, the whole model is
    exported and timed so that predictions carry the measured remainder."""
    specs = model_layers(model, example)
    groups = channel_groups(model, example, ignored)
    _mark_prunable(specs, groups)
    table = build_table(specs, runtime, threads, cache_dir=cache_dir, runs=runs)
    ctx = LatencyContext(specs, groups, table, tuple(example.shape))
    if measure_full:
        workdir = Path(workdir or tempfile.mkdtemp(prefix="edgecnn_lat_"))
        ctx.onnx_path = export_onnx(model, example, workdir / "unpruned.onnx")
        ctx.full_ms = measure_models({"unpruned": ctx.onnx_path}, ctx.input_shape, runtime, threads,
                                     runs=30)["unpruned"]["p25_ms"]
        ctx.remainder_ms = round(ctx.full_ms - predict_ms(table, specs, {}), 4)
    return ctx


def report(ctx: LatencyContext, pruned: nn.Module, example: torch.Tensor, *, measure: bool = True,
           workdir: Path | None = None, runs: int = 50) -> dict[str, Any]:
    """Predicted against measured speedup of `pruned` over the model `ctx` was prepared from,
    the per-layer breakdown, and the groups cut without predicted gain."""
    widths = widths_of(pruned, ctx.specs)
    before, after = ctx.predicted_ms(), ctx.predicted_ms(widths)
    out: dict[str, Any] = {
        "runtime": ctx.table.runtime, "runtime_version": ctx.table.version, "threads": ctx.table.threads,
        "cpu": ctx.table.cpu, "remainder_ms": ctx.remainder_ms,
        "predicted_ms_unpruned": round(before, 4), "predicted_ms_pruned": round(after, 4),
        "predicted_speedup": round(before / max(1e-9, after), 4),
        # The layers alone, without the remainder: on a shared machine the table and the whole model
        # may be timed at different loads, which the remainder (a difference of the two) absorbs.
        "predicted_speedup_layers": round((before - ctx.remainder_ms) / max(1e-9, after - ctx.remainder_ms), 4),
        "no_gain": no_gain_groups(ctx.table, ctx.specs, ctx.groups, ctx.keep_of(pruned)),
        "layers": layer_breakdown(ctx.table, ctx.specs, widths)}
    if measure and ctx.onnx_path is not None:
        workdir = Path(workdir or ctx.onnx_path.parent)
        p = export_onnx(pruned, example, workdir / "pruned.onnx")
        lat = measure_models({"unpruned": ctx.onnx_path, "pruned": p}, ctx.input_shape, ctx.table.runtime,
                             ctx.table.threads, runs=runs)
        out["measured"] = lat
        out["measured_speedup"] = round(lat["unpruned"]["median_ms"] / max(1e-9, lat["pruned"]["median_ms"]), 4)
        out["load_average"] = load_average()
        if out["measured_speedup"] <= 1.02:
            out["no_gain_measured"] = True
    if out["no_gain"]:
        warnings.warn(f"prune: on {ctx.table.runtime} ({ctx.table.threads} thread(s)) the cut of "
                      f"{', '.join(out['no_gain'])} buys no predicted latency (the table is flat there)",
                      stacklevel=2)
    if out.get("no_gain_measured"):
        warnings.warn(f"prune: the pruned model is not measurably faster on {ctx.table.runtime} "
                      f"({out['measured_speedup']}x)", stacklevel=2)
    return out


def plan_for(model: nn.Module, cfg: Any, example: torch.Tensor, ignored: Sequence[nn.Module],
             sens: Any = None) -> tuple[LatencyContext, LatencyPlan]:
    """The table for `model` on cfg.latency_runtime and the plan for cfg's target (a PruneConfig:
    target_latency_ratio, else target_macs_ratio, else `ratio` as a share of channels)."""
    ctx = prepare(model, example, ignored, cfg.latency_runtime, cfg.latency_threads, cache_dir=cfg.latency_cache,
                  measure_full=cfg.latency_measure)
    if cfg.target_latency_ratio is not None:
        target = ("latency", cfg.target_latency_ratio)
    elif cfg.target_macs_ratio is not None:
        target = ("macs", cfg.target_macs_ratio)
    else:
        target = ("channels", cfg.ratio)
    drop = None
    if sens is not None:
        from edgecnn.compress.sensitivity import _drop_curve

        curves = {g: _drop_curve(sens, g) for g in sens.top1}
        drop = lambda g, r: float(np.interp(r, *curves[g])) if g in curves else 0.0  # noqa: E731
    plan = plan_widths(ctx.table, ctx.specs, ctx.groups, target=target, max_ratio=cfg.max_layer_ratio,
                       round_to=ctx.round_to(cfg.round_to), drop=drop, remainder_ms=ctx.remainder_ms)
    return ctx, plan
