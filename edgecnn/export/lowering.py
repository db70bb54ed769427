"""Runtime-aware lowering of an int8 QDQ ONNX model: the same numbers, in the form a runtime runs fast.

The exporters write one QDQ graph for every runtime (int8 activations, asymmetric per tensor;
int8 weights, symmetric per channel: the TFLite scheme the PT2E quantizer annotates). Runtimes
differ in which QDQ forms they fuse into integer kernels; this module rewrites the graph into
the form a runtime wants, pass by pass, each pass either exact or opt-in and measured:

| pass | exact | what and why |
|---|---|---|
| `uint8_activations` | yes | int8 activation with zero point z -> uint8 with z + 128, same scale. ONNX Runtime's x86 int8 GEMM/conv (MLAS) is fast for u8 activations x s8 weights (VPDPBUSD multiplies u8 by s8); s8 activations go through a slower path (docs ARCHITECTURE: resnet18 23.3 ms s8s8 vs 8.4 ms u8s8). Weights stay int8 symmetric. |
| `uint8_weights` | yes (opt-in) | int8 conv/linear weights with zero point z -> uint8 with z + 128, same scale. ONNX Runtime's x64 u8s8 kernels on CPUs without VNNI (AVX2: an AMD Zen 3 here) add pairs of u8 x s8 products in int16 (`vpmaddubsw`), which saturates: 255 x 127 x 2 > 32767. On a 224-px mobilenet_v2 that moved logits by up to 2.6 and agreement with the fake-quant graph fell to 85.4%. u8 x u8 has no such step: exact, but 1.37-1.42x slower there (`benchmarks/results/ort_saturation_mobilenet_v2.md`). `ort_u8s8_saturates()` tells whether this machine's ORT does it. |
| `fold_activation` | yes | Relu (or Clip) whose only consumer is a QuantizeLinear that clamps at least as hard (Relu: zero point at the type minimum) is dropped: Q(relu(x)) == Q(x) for every x. Leaves DQ -> Conv/Add -> Q, the pattern ORT fuses into QLinearConv/QLinearAdd. |
| `global_pool` | float-exact | ReduceMean over H, W (keepdims) -> GlobalAveragePool: the same float mean; ORT then fuses DQ -> GlobalAveragePool -> Q into QLinearGlobalAveragePool (integer mean, may round 1 LSB differently: measured, see `compare`). Off unless asked. |
| `requantize_float_inputs` | no (opt-in) | a float tensor that is quantized for one consumer but read in float by another (litert's PT2E annotation under torch 2.14 left every residual add float; edgecnn's quantizer now annotates them, `QuantizeConfig.int8_adds`, so on its graphs this pass finds nothing) is read through its Q/DQ by all: each changed read moves by at most scale/2. Lets ORT fuse the next Add. |

    from edgecnn.export.lowering import LoweringConfig, lower_qdq, compare, ort_fused_ops

    result = lower_qdq(onnx.load("model_int8.onnx"), LoweringConfig())   # -> LoweringResult
    onnx.save(result.proto, "model_int8_ort.onnx"); result.changes     # {'uint8_activations': 54, ...}
    compare("model_int8.onnx", "model_int8_ort.onnx", x)                # max |diff| of the logits in ORT
    ort_fused_ops("model_int8_ort.onnx")                                # Counter of ops after ORT's optimizer

Only onnx, numpy (and onnxruntime for `compare`/`ort_fused_ops`) are needed, imported lazily.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.config import check

__all__ = ["LoweringConfig", "LoweringResult", "lower_qdq", "lower_file", "compare", "ort_fused_ops", "litert_delegation", "openvino_precisions",
           "ort_session", "ort_u8s8_saturates", "PRESETS", "AUTO", "preset", "resolve"]


@dataclass(frozen=True)
class LoweringConfig:
    uint8_activations: bool = True          # int8 activations -> uint8, zero point + 128 (exact)
    uint8_weights: bool = False             # int8 conv/linear weights -> uint8, zero point + 128 (exact)
    fold_activation: bool = True            # drop Relu/Clip a following QuantizeLinear makes redundant (exact)
    global_pool: bool = False               # ReduceMean(H, W) -> GlobalAveragePool (float-exact; ORT's int8 mean may round differently)
    requantize_float_inputs: bool = False   # float reads of a quantized tensor go through its Q/DQ (inexact, opt-in)

    def __post_init__(self):
        check(any(dataclasses.astuple(self)), "lowering", "every pass is off: nothing to do")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# What each runtime wants (measured on this machine: benchmarks/README.md "Lowering").
PRESETS: dict[str, LoweringConfig] = {
    # ORT x86: u8 activations for the VNNI u8s8 kernels; Relu/Clip folded so Conv fuses. An exact
    # rewrite, but ORT's u8s8 kernels without VNNI saturate int16 pairs ('onnxruntime-exact').
    "onnxruntime": LoweringConfig(),
    # ORT x86, exact on every x64 kernel: u8 weights too, where u8s8 kernels without VNNI saturate
    # (ort_u8s8_saturates()); slower than u8s8 where those run.
    "onnxruntime-exact": LoweringConfig(uint8_weights=True),
    # ORT x86, whole graph in integer kernels: residual reads requantized (QLinearAdd) and the
    # global pool as QLinearGlobalAveragePool. Not exact: use with measured accuracy.
    "onnxruntime-integer": LoweringConfig(requantize_float_inputs=True, global_pool=True),
    # OpenVINO runs Q/DQ as FakeQuantize and chooses u8/i8 itself (convolutions are u8 either way);
    # what it cannot do is an Add with a float input: requantizing those reads lets it fuse the Add
    # into the int8 convolution instead of running it in bf16/f32 with reorders around it. Not exact
    # where it changes something; edgecnn's own int8 graphs (QuantizeConfig.int8_adds) have no such read.
    "openvino": LoweringConfig(requantize_float_inputs=True),
}


AUTO = "auto"   # the exporters' default: the exact ONNX Runtime form for this machine (`resolve`)


def resolve(name: str | None) -> str | None:
    """'auto' -> 'onnxruntime-exact' where this machine's ONNX Runtime saturates u8s8 (x64 without
    VNNI, `ort_u8s8_saturates()`), else 'onnxruntime'; any other name as it is."""
    if name != AUTO:
        return name
    return "onnxruntime-exact" if ort_u8s8_saturates() else "onnxruntime"


def preset(runtime: str) -> LoweringConfig:
    from edgecnn.errors import unknown

    runtime = resolve(runtime)
    if runtime not in PRESETS:
        raise unknown("lowering runtime", runtime, [*PRESETS, AUTO], "runtime")
    return PRESETS[runtime]


@dataclass
class LoweringResult:
    proto: Any                                   # onnx.ModelProto (a new one; the input is not changed)
    config: LoweringConfig
    changes: dict[str, int] = field(default_factory=dict)   # pass -> nodes/tensors it changed
    notes: list[str] = field(default_factory=list)          # what a pass skipped, and why

    @property
    def exact(self) -> bool:
        """Whether every pass that changed something is exact."""
        return not self.changes.get("requantize_float_inputs") and not self.changes.get("global_pool")

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "changes": dict(self.changes), "notes": list(self.notes),
                "exact": self.exact}


# --------------------------------------------------------------------------- graph helpers

class _Graph:
    """Producer/consumer maps and constant lookup over a GraphProto (rebuilt after each pass)."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.g = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.const_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = collections.defaultdict(list)
        for n in graph.node:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.outputs = {o.name for o in graph.output}
        self._np = numpy_helper

    def const(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        if name in self.inits:
            return self._np.to_array(self.inits[name])
        n = self.const_nodes.get(name)
        if n is not None:
            for a in n.attribute:
                if a.name == "value":
                    return self._np.to_array(a.t)
        return None

    def is_const(self, name: str) -> bool:
        return name in self.inits or name in self.const_nodes

    def qparams(self, node) -> tuple[np.ndarray, np.ndarray] | None:
        """(scale, zero point) of a Q/DQ node when both are constants; zero point defaults to uint8 0."""
        s = self.const(node.input[1])
        if s is None:
            return None
        z = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        return (s, z) if z is not None else None


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


# --------------------------------------------------------------------------- passes

def _uint8_activations(model, result: LoweringResult) -> None:
    """int8 -> uint8 for every activation Q and the DQs that read it (zero point + 128, same scale)."""
    import onnx
    from onnx import numpy_helper

    G = _Graph(model.graph)
    new_zp: dict[str, str] = {}

    def u8_name(zp_name: str) -> str:
        if zp_name not in new_zp:
            z = G.const(zp_name).astype(np.int16) + 128
            name = f"{zp_name}_u8"
            model.graph.initializer.append(numpy_helper.from_array(z.astype(np.uint8), name))
            new_zp[zp_name] = name
        return new_zp[zp_name]

    changed_tensors = set()
    count = 0
    for q in list(model.graph.node):
        if q.op_type != "QuantizeLinear" or len(q.input) < 3:
            continue
        z = G.const(q.input[2])
        if z is None or z.dtype != np.int8:
            continue
        readers = G.consumers.get(q.output[0], [])
        # Every reader must be a DQ with a constant int8 zero point, and the tensor no graph output:
        # the int8 tensor then exists only between this Q and those DQs, so its type is free to change.
        if q.output[0] in G.outputs or not readers or any(
                r.op_type != "DequantizeLinear" or len(r.input) < 3 or G.const(r.input[2]) is None
                or G.const(r.input[2]).dtype != np.int8 for r in readers):
            result.notes.append(f"uint8_activations: kept {q.output[0]} int8 (read by something other than a "
                                "DequantizeLinear with a constant zero point)")
            continue
        for node in (q, *readers):
            node.input[2] = u8_name(node.input[2])
        changed_tensors.add(q.output[0])
        count += 1 + len(readers)
    for vi in model.graph.value_info:
        if vi.name in changed_tensors:
            vi.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    if count:
        result.changes["uint8_activations"] = count


def _uint8_weights(model, result: LoweringResult) -> None:
    """int8 weight initializers read by a DequantizeLinear that feeds a Conv/Gemm/MatMul weight input ->
    uint8 values + 128 with zero points + 128 (same scale, same dequantized numbers)."""
    from onnx import numpy_helper

    G = _Graph(model.graph)
    new_names: dict[str, str] = {}

    def u8(name: str) -> str:
        if name not in new_names:
            v = G.const(name).astype(np.int16) + 128
            new_names[name] = f"{name}_u8"
            model.graph.initializer.append(numpy_helper.from_array(v.astype(np.uint8), new_names[name]))
        return new_names[name]

    count = 0
    for dq in model.graph.node:
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in G.inits or len(dq.input) < 3:
            continue
        w, z = G.const(dq.input[0]), G.const(dq.input[2])
        if w.dtype != np.int8 or z is None or z.dtype != np.int8:
            continue
        readers = G.consumers.get(dq.output[0], [])
        if not readers or any(r.op_type not in ("Conv", "Gemm", "MatMul") or list(r.input).index(dq.output[0]) != 1
                              for r in readers):
            continue
        dq.input[0], dq.input[2] = u8(dq.input[0]), u8(dq.input[2])
        count += 1
    if count:
        result.changes["uint8_weights"] = count


def _q_range(G: _Graph, q) -> tuple[float, float, float] | None:
    """(s * (qmin - z), s * (qmax - z), s): the float interval a QuantizeLinear saturates to, and its step
    (per-tensor only)."""
    qp = G.qparams(q)
    if qp is None:
        return None
    s, z = qp
    if s.size != 1 or z.size != 1:
        return None
    info = np.iinfo(z.dtype)
    s, z = float(s.reshape(-1)[0]), int(z.reshape(-1)[0])
    return s * (info.min - z), s * (info.max - z), s


def _clip_bounds(G: _Graph, node) -> tuple[float, float] | None:
    if node.op_type == "Relu":
        return 0.0, float("inf")
    lo, hi = -float("inf"), float("inf")
    if len(node.input) > 1 and node.input[1]:
        v = G.const(node.input[1])
        if v is None:
            return None
        lo = float(v)
    if len(node.input) > 2 and node.input[2]:
        v = G.const(node.input[2])
        if v is None:
            return None
        hi = float(v)
    if _attr(node, "min") is not None:   # Clip before opset 11
        lo = float(_attr(node, "min"))
    if _attr(node, "max") is not None:
        hi = float(_attr(node, "max"))
    return lo, hi


def _fold_activation(model, result: LoweringResult) -> None:
    """Drop Relu/Clip x -> Q when Q saturates inside the clip interval: Q(clip(x)) == Q(x) for all x."""
    G = _Graph(model.graph)
    drop = []
    for node in model.graph.node:
        if node.op_type not in ("Relu", "Clip"):
            continue
        readers = G.consumers.get(node.output[0], [])
        if node.output[0] in G.outputs or len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
            continue
        bounds, qr = _clip_bounds(G, node), _q_range(G, readers[0])
        if bounds is None or qr is None:
            continue
        lo, hi = bounds
        # Q's own clamp is at least as tight as the activation's: the activation changes no result.
        # Values within half a step of Q's ends already round to qmin/qmax, so a clip there is also
        # redundant (ReLU6 with range [0, 6] computes 6/255*255 = 6.0000002 in float32).
        if lo <= qr[0] + 0.49 * qr[2] and hi >= qr[1] - 0.49 * qr[2]:
            readers[0].input[0] = node.input[0]
            drop.append(node)
    for node in drop:
        model.graph.node.remove(node)
    if drop:
        result.changes["fold_activation"] = len(drop)


def _requantize_float_inputs(model, result: LoweringResult) -> None:
    """A tensor that has Q -> DQ for one reader and float readers elsewhere: all read the DQ."""
    G = _Graph(model.graph)
    count = 0
    for name, readers in list(G.consumers.items()):
        if G.is_const(name) or name in G.inits:
            continue
        qs = [r for r in readers if r.op_type == "QuantizeLinear" and r.input[0] == name]
        floats = [r for r in readers if r.op_type not in ("QuantizeLinear", "DequantizeLinear")]
        if not qs or not floats:
            continue
        dqs = [d for d in G.consumers.get(qs[0].output[0], []) if d.op_type == "DequantizeLinear"]
        if not dqs:
            continue
        for r in floats:
            for i, inp in enumerate(r.input):
                if inp == name:
                    r.input[i] = dqs[0].output[0]
                    count += 1
    if count:
        result.changes["requantize_float_inputs"] = count
        result.notes.append(f"requantize_float_inputs: {count} float read(s) of a quantized tensor now go through "
                            "its Q/DQ (each value moves by at most half a quantization step)")


def _global_pool(model, result: LoweringResult) -> None:
    """ReduceMean over axes (2, 3) with keepdims=1 on a 4-D tensor -> GlobalAveragePool."""
    import onnx

    G = _Graph(model.graph)
    count = 0
    for i, node in enumerate(list(model.graph.node)):
        if node.op_type != "ReduceMean" or _attr(node, "keepdims", 1) != 1:
            continue
        axes = _attr(node, "axes")
        if axes is None and len(node.input) > 1:
            v = G.const(node.input[1])
            axes = None if v is None else [int(a) for a in v.reshape(-1)]
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
            continue
        if any(a < 0 for a in axes) and not _rank4(model, node.input[0]):
            continue
        # Written artifacts carry no node names (export/onnx.finalize_proto), so name by the output,
        # which is unique in a valid graph.
        new = onnx.helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output),
                                    name=f"{node.name or node.output[0]}_gap")
        idx = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(idx, new)
        count += 1
    if count:
        result.changes["global_pool"] = count


def _rank4(model, name: str) -> bool:
    for vi in list(model.graph.value_info) + list(model.graph.input):
        if vi.name == name:
            return len(vi.type.tensor_type.shape.dim) == 4
    return False


def _toposort(model) -> None:
    """Reorder nodes so each comes after the producers of its inputs (passes may rewire reads forward)."""
    nodes = list(model.graph.node)
    ready = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    done: list = []
    pending = nodes
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                done.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"lowering left a cycle or a dangling input at node {rest[0].name} "
                             f"({rest[0].op_type}, inputs {list(rest[0].input)})")
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(done)


def _drop_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


# --------------------------------------------------------------------------- entry points

def lower_qdq(model, config: LoweringConfig | None = None) -> LoweringResult:
    """A lowered copy of QDQ ModelProto `model` (see the module table); `model` is not changed."""
    import onnx

    config = config or LoweringConfig()
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    if config.global_pool and not proto.graph.value_info:
        # A written artifact has no shape annotations (export/onnx.finalize_proto drops them);
        # the pool pass reads tensor ranks.
        proto = onnx.shape_inference.infer_shapes(proto)
    result = LoweringResult(proto, config)
    # Order matters: float reads are requantized first so the activations they leave alone can fold.
    if config.requantize_float_inputs:
        _requantize_float_inputs(proto, result)
    if config.fold_activation:
        _fold_activation(proto, result)
    if config.global_pool:
        _global_pool(proto, result)
    if config.uint8_activations:
        _uint8_activations(proto, result)
    if config.uint8_weights:
        _uint8_weights(proto, result)
    _toposort(proto)
    _drop_unused_initializers(proto)
    onnx.checker.check_model(proto)
    return result


def lower_file(src: str | Path, dst: str | Path, config: LoweringConfig | None = None) -> LoweringResult:
    """`lower_qdq` on a file, written to `dst` (metadata, contract included, kept as it was)."""
    import onnx

    result = lower_qdq(onnx.load(str(src)), config)
    onnx.save_model(result.proto, str(dst))
    return result


def ort_session(model: str | Path | bytes, threads: int | None = 1, optimized_path: str | Path | None = None,
                config_entries: dict[str, str] | None = None, optimize: bool = True):
    """A CPU InferenceSession; `optimize`: all graph optimizations (fused int8 kernels), else none (QDQ
    run literally: dequantize, float op, quantize, which is the fake-quant model's arithmetic).
    `optimized_path` keeps what ORT made of the graph."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    for k, v in (config_entries or {}).items():
        so.add_session_config_entry(k, v)
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


@functools.cache
def ort_u8s8_saturates() -> bool:
    """Whether this machine's ONNX Runtime adds u8 x s8 products in int16 pairs (x64 kernels without
    VNNI): a 1x1 QLinearConv over 4 channels of 255 x 127 gives 4 x 255 x 127 = 129,540 exactly, or
    2 x 32,767 when the pairs saturate. The probe lives in the measurement agent, which records it
    on every device it measures on."""
    from edgecnn.bench.agent import ort_u8s8_saturates as probe

    return probe()


def ort_fused_ops(model: str | Path | bytes, threads: int | None = 1) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime runs after its optimizer (QLinearConv, QLinearAdd, ...)."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        ort_session(model, threads, out)
        return dict(collections.Counter(n.op_type for n in onnx.load(str(out)).graph.node))


def compare(before: str | Path | bytes, after: str | Path | bytes, x: np.ndarray,
            optimize: bool = False) -> dict[str, float]:
    """Logits of both models in ONNX Runtime on float32 NCHW `x`: max/mean |diff|, top-1 agreement (%).

    optimize=False (default) runs both graphs literally, so the figure is the rewrite's own effect
    (0 for the exact passes). With optimize=True it also includes the difference between ORT's fused
    integer kernels and its float QDQ fallback, which differ by one rounding step here and there
    (the graph before lowering leaves some ops unfused that the lowered graph fuses)."""
    a_sess, b_sess = ort_session(before, optimize=optimize), ort_session(after, optimize=optimize)
    name_a, name_b = a_sess.get_inputs()[0].name, b_sess.get_inputs()[0].name
    a = np.concatenate([a_sess.run(None, {name_a: x[i:i + 1]})[0] for i in range(len(x))])
    b = np.concatenate([b_sess.run(None, {name_b: x[i:i + 1]})[0] for i in range(len(x))])
    d = np.abs(a - b)
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
            "top1_agreement": round(100.0 * float((a.argmax(1) == b.argmax(1)).mean()), 2), "n": len(x)}


def litert_delegation(path: str | Path, threads: int = 1) -> dict[str, Any]:
    """Which ops of a .tflite file LiteRT hands to its default delegate (XNNPACK on CPU).

    LiteRT's execution plan lists the original ops and then one DELEGATE node per delegated
    partition. An op ran outside the delegate when its output is read by a DELEGATE node (the
    delegate takes it as input) or is a model output no DELEGATE node produces; every other op
    ran inside a delegate.
    """
    from edgecnn.runtimes.litert import _interpreter_cls

    mod, _ = _interpreter_cls()
    it = mod.Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    ops = it._get_ops_details()
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    fed = {int(i) for d in delegates for i in d["inputs"]}
    made = {int(t) for d in delegates for t in d["outputs"]}
    outputs = {int(d["index"]) for d in it.get_output_details()} - made
    outside = [o["op_name"] for o in ops if o["op_name"] != "DELEGATE"
               and any(int(t) in fed or int(t) in outputs for t in o["outputs"])]
    inside = collections.Counter(o["op_name"] for o in ops if o["op_name"] != "DELEGATE") - collections.Counter(outside)
    return {"delegate_partitions": len(delegates), "delegated_ops": dict(inside),
            "outside_delegate": dict(collections.Counter(outside))}


_OV_COMPUTE = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Eltwise", "Pooling", "Reduce",
               "Subgraph", "Interpolate", "MVN")


def openvino_precisions(model: str | Path, threads: int = 1, config: dict[str, Any] | None = None) -> dict[str, int]:
    """'layerType:runtimePrecision' -> count over the compute layers OpenVINO's CPU plugin executes.

    Read from `compiled_model.get_runtime_model()` (each executed node's rt_info): e.g.
    {'Convolution:u8': 20, 'Eltwise:bf16': 4} says the convolutions ran in int8 and four adds in bf16.
    `model`: an IR .xml or an ONNX file.
    """
    import openvino as ov

    core = ov.Core()
    props = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", **(config or {})}
    compiled = core.compile_model(core.read_model(str(model)), "CPU", props)
    out: collections.Counter = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        ri = op.get_rt_info()
        kind = ri["layerType"].astype(str) if "layerType" in ri else op.get_type_name()
        if kind in _OV_COMPUTE:
            prec = ri["runtimePrecision"].astype(str) if "runtimePrecision" in ri else "?"
            out[f"{kind}:{prec}"] += 1
    return dict(out)
