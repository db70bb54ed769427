"""TFLite (LiteRT) via litert-torch, from the same float model or PT2E graph.

fp32: `litert_torch.convert(model, (x,))`, batch 1 (TFLite shapes are fixed; the runtime adapter
loops over a batch), NCHW input as in PyTorch (transposes are inside the model).
int8 (full integer): the PT2E-converted graph, converted in litert-torch's STATIC QDQ mode, which
turns every quantize/dequantize pair into int8 tensors and kernels. Two details of this stack:
- litert-torch needs quantize ops on float weights (`convert_pt2e(fold_quantize=False)`); a graph
  converted with the default folding holds int8 weight constants, so `unfold_quantized_weights`
  puts float -> quantize back in front of them (same int8 values, exactly).
- the converter folds the boundary quantize/dequantize into the I/O, giving int8 input and output.
  `ExportConfig.tflite_io='float'` (default) puts a QUANTIZE/DEQUANTIZE pair back at the boundary
  so an app feeds float32; 'int8' keeps int8 I/O (scale and zero point in the contract and file).
The contract is embedded as TFLite model metadata named `edgecnn_contract` (JSON bytes).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.export.base import EXPORTERS, FormatSpec, Job, Written, contract_json, versions

METADATA_KEY = "edgecnn_contract"


def unfold_quantized_weights(gm):
    """Copy of a PT2E graph whose int8 weight constants are float -> quantize -> dequantize again."""
    import torch

    gm = copy.deepcopy(gm)
    qd = torch.ops.quantized_decomposed
    pairs = {qd.dequantize_per_channel.default: qd.quantize_per_channel.default,
             qd.dequantize_per_tensor.default: qd.quantize_per_tensor.default}

    def attr(target: str):
        obj = gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    graph = gm.graph
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in pairs:
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "get_attr"):
            continue
        q = attr(src.target)
        if not isinstance(q, torch.Tensor) or q.dtype not in (torch.int8, torch.uint8):
            continue
        rest = [attr(a.target) if isinstance(a, torch.fx.Node) and a.op == "get_attr" else a
                for a in node.args[1:]]
        if any(isinstance(a, torch.fx.Node) for a in rest):
            continue
        name = f"_edgecnn_float_weight_{count}"
        gm.register_buffer(name, node.target(q, *rest).detach().clone())
        with graph.inserting_before(node):
            fl = graph.get_attr(name)
            qn = graph.call_function(pairs[node.target], (fl, *node.args[1:]))
        node.replace_input_with(src, qn)
        count += 1
    graph.eliminate_dead_code()
    gm.recompile()
    return gm


def materialize_requantize(gm):
    """Copy of a PT2E graph in which every change of int8 scale survives the TFLite converter.

    Where a dequantize(s1) feeds a quantize(s2) directly (e.g. across an eval-mode dropout that
    got its own observer), litert-torch drops the second quantize and keeps s1, so the TFLite
    model skips the requantization (and its clipping) that the fake-quant graph does: 2% of
    mnist images changed class. A clamp to s2's range in between changes no value of the
    reference (quantize(s2) clamps there anyway) but the converter lowers it to an int8 op with
    s2 output, which requantizes. Eval-mode dropout (train=False) is removed first: it is identity.
    """
    import torch

    gm = copy.deepcopy(gm)
    qd = torch.ops.quantized_decomposed
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.dropout.default \
                and len(node.args) >= 3 and node.args[2] is False:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != qd.quantize_per_tensor.default:
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_function"
                and src.target == qd.dequantize_per_tensor.default):
            continue
        s1, z1 = src.args[1], src.args[2]
        s2, z2, qmin, qmax = node.args[1:5]
        if (s1, z1) == (s2, z2) or not all(isinstance(v, (int, float)) for v in (s1, z1, s2, z2)):
            continue
        with graph.inserting_before(node):
            clamp = graph.call_function(torch.ops.aten.clamp.default,
                                        (src, float((qmin - z2) * s2), float((qmax - z2) * s2)))
        node.replace_input_with(src, clamp)
    graph.eliminate_dead_code()
    gm.recompile()
    for m in gm.modules():   # the graph is eval-only; litert-torch warns about modules left in train mode
        m.training = False
    return gm


@contextlib.contextmanager
def _quiet():
    """litert-torch prints a progress log to the console; library code stays silent (STYLE 4)."""
    import litert_torch

    cfg = litert_torch.config
    was = getattr(cfg, "show_progress", None)
    try:
        if was is not None:
            cfg.show_progress = False
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if was is not None:
            cfg.show_progress = was


def _convert(job: Job) -> bytes:
    import litert_torch

    x = job.example_input[:1]
    with _quiet():
        if job.precision == "int8":
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
            from litert_torch.quantize.quant_config import QuantConfig

            # Only the quantizer's mode (static) is read here: the graph is already quantized.
            qc = QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(
                get_symmetric_quantization_config(is_per_channel=True)))
            graph = materialize_requantize(unfold_quantized_weights(job.model))
            edge = litert_torch.convert(graph, (x,), quant_config=qc)
        else:
            edge = litert_torch.convert(job.model, (x,))
        return edge.model_content()


def _schema():
    from ai_edge_litert import schema_py_generated as fb
    return fb


def _load(buf: bytes):
    fb = _schema()
    return fb.ModelT.InitFromObj(fb.Model.GetRootAs(buf, 0))


def _sharing_builder():
    """A flatbuffers Builder that writes each distinct numeric vector once and points every user at it.

    The object API packs every tensor's quantization vectors separately, although a weight and its
    int32 bias carry the same all-zero int64 zero points, and layers of equal width share them again:
    on the default recipe's int8 model the zero points go from 2,840 to 744 bytes
    (benchmarks/results/export_size.json). A flatbuffer may refer to one
    vector from several tables (flatc shares strings the same way); values do not change.
    """
    import flatbuffers

    class SharingBuilder(flatbuffers.Builder):
        def __init__(self, size: int):
            super().__init__(size)
            self._vectors: dict[tuple[str, bytes], int] = {}

        def CreateNumpyVector(self, x):   # noqa: N802  (flatbuffers' name)
            x = np.asarray(x)
            key = (x.dtype.str, x.tobytes())
            if key not in self._vectors:
                self._vectors[key] = super().CreateNumpyVector(x)
            return self._vectors[key]

    return SharingBuilder(1024)


def _pack(model) -> bytes:
    b = _sharing_builder()
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def share_empty_buffers(model) -> int:
    """Point every tensor that holds no data at buffer 0 (empty by the schema's convention) and drop
    the converter's other empty buffers; returns how many were dropped. Activations get their memory
    from the interpreter's arena, never from a buffer, so what is computed does not change."""
    def empty(b) -> bool:
        return (b.data is None or len(b.data) == 0) and not (b.offset or 0) > 1   # offset > 1: data outside the flatbuffer

    if not model.buffers or not empty(model.buffers[0]):
        return 0
    keep, new_index = [model.buffers[0]], {}

    def remap(i: int) -> int:
        if empty(model.buffers[i]):
            return 0
        if i not in new_index:
            new_index[i] = len(keep)
            keep.append(model.buffers[i])
        return new_index[i]

    for sg in model.subgraphs:
        for t in sg.tensors:
            t.buffer = remap(t.buffer)
    for md in model.metadata or []:
        md.buffer = remap(md.buffer)
    if model.metadataBuffer is not None:
        model.metadataBuffer = [remap(int(i)) for i in model.metadataBuffer]
    dropped = len(model.buffers) - len(keep)
    model.buffers = keep
    return dropped


def _opcode(model, builtin: int) -> int:
    fb = _schema()
    for i, oc in enumerate(model.operatorCodes):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == builtin:
            return i
    oc = fb.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = builtin, min(builtin, 127), 1
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1


def _float_tensor_like(model, sg, idx: int, name: str) -> int:
    fb = _schema()
    src = sg.tensors[idx]
    t = fb.TensorT()
    t.shape, t.shapeSignature, t.type, t.name = list(src.shape), src.shapeSignature, fb.TensorType.FLOAT32, name
    model.buffers.append(fb.BufferT())
    t.buffer = len(model.buffers) - 1
    t.hasRank = True
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def float_io(buf: bytes) -> bytes:
    """Give an int8-I/O model float32 I/O: QUANTIZE after the input, DEQUANTIZE before the output."""
    fb = _schema()
    model = _load(buf)
    sg = model.subgraphs[0]
    changed = False
    # The object API hands back read-only numpy arrays; lists can be edited.
    sg.inputs, sg.outputs = [int(i) for i in sg.inputs], [int(i) for i in sg.outputs]
    ins, outs = list(sg.inputs), list(sg.outputs)
    for pos, idx in enumerate(ins):
        t = sg.tensors[idx]
        if t.type not in (fb.TensorType.INT8, fb.TensorType.UINT8):
            continue
        new = _float_tensor_like(model, sg, idx, t.name.decode() if isinstance(t.name, bytes) else t.name)
        t.name = (f"{sg.tensors[new].name}_int8").encode()
        op = fb.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = _opcode(model, fb.BuiltinOperator.QUANTIZE), [new], [idx]
        sg.operators.insert(0, op)
        sg.inputs[pos] = new
        _retarget_signature(model, idx, new)
        changed = True
    for pos, idx in enumerate(outs):
        t = sg.tensors[idx]
        if t.type not in (fb.TensorType.INT8, fb.TensorType.UINT8):
            continue
        new = _float_tensor_like(model, sg, idx, t.name.decode() if isinstance(t.name, bytes) else t.name)
        t.name = (f"{sg.tensors[new].name}_int8").encode()
        op = fb.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = _opcode(model, fb.BuiltinOperator.DEQUANTIZE), [idx], [new]
        sg.operators.append(op)
        sg.outputs[pos] = new
        _retarget_signature(model, idx, new)
        changed = True
    return _pack(model) if changed else buf


def _retarget_signature(model, old: int, new: int) -> None:
    for sig in model.signatureDefs or []:
        if sig.subgraphIndex != 0:
            continue
        for tm in list(sig.inputs or []) + list(sig.outputs or []):
            if tm.tensorIndex == old:
                tm.tensorIndex = new


def short_name(name: str) -> str:
    """A tensor name as the module path it comes from: 'pkg.BNCNN/torch.nn.modules.container.Sequential_features/
    torch.nn.modules.container.Sequential_7/torch.nn.modules.conv.Conv2d_0;1' -> 'features.7.0;1'.

    litert-torch names a tensor after every module stack fused into it, each stack spelled with the
    full class paths; the last stack's attribute names are what a debugger needs.
    """
    parts = name.split(";")
    tail = parts[-1] if len(parts) > 1 and parts[-1].isdigit() else ""
    stacks = [p for p in parts if "/" in p]
    if stacks:
        attrs = []
        for comp in stacks[-1].split("/")[1:]:          # the first component is the root model's class
            cls_attr = comp.rsplit(".", 1)[-1]           # 'Conv2d_0' -> attribute '0'
            attrs.append(cls_attr.split("_", 1)[1] if "_" in cls_attr else cls_attr)
        short = ".".join(attrs) or stacks[-1].rsplit(".", 1)[-1]
    else:
        short = parts[0].rsplit(".", 1)[-1] if parts[0] else name
        if not tail and len(parts) > 1 and parts[-1]:
            tail = parts[-1]
    return f"{short};{tail}" if tail else short


def embed_metadata(buf: bytes, key: str, value: bytes) -> bytes:
    """Add `value` as model metadata `key`, and write the model compactly: tensor names become module
    paths (`short_name`), data-less tensors share buffer 0 (`share_empty_buffers`), equal vectors are
    written once (`_sharing_builder`).

    The converter's names are most of a small int8 model's non-weight bytes (1.5 kB of the default
    recipe's 51 kB); graph inputs and outputs keep their names (the signature refers to them).
    """
    fb = _schema()
    model = _load(buf)
    for sg in model.subgraphs:
        io = {int(i) for i in list(sg.inputs) + list(sg.outputs)}
        for i, t in enumerate(sg.tensors):
            if t.name is not None and i not in io:
                name = t.name.decode() if isinstance(t.name, bytes) else t.name
                t.name = short_name(name).encode()
    b = fb.BufferT()
    b.data = np.frombuffer(value, np.uint8)
    model.buffers.append(b)
    md = fb.MetadataT()
    md.name, md.buffer = key, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if (m.name.decode() if isinstance(m.name, bytes)
                                                            else m.name) != key] + [md]
    share_empty_buffers(model)
    return _pack(model)


def read_metadata(path: str | Path, key: str = METADATA_KEY) -> dict[str, Any] | None:
    """The contract embedded in a .tflite file, or None."""
    fb = _schema()
    m = fb.Model.GetRootAs(Path(path).read_bytes(), 0)
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        if md.Name().decode() == key:
            return json.loads(bytes(m.Buffers(md.Buffer()).DataAsNumpy()).decode())
    return None


def _io_details(buf: bytes) -> dict[str, Any]:
    from edgecnn.runtimes.litert import _interpreter_cls

    mod, _ = _interpreter_cls()
    it = mod.Interpreter(model_content=buf)
    i, o = it.get_input_details()[0], it.get_output_details()[0]

    def q(d):
        scale, zp = d["quantization"]
        if d["dtype"].__name__ not in ("int8", "uint8") or not scale:
            return None
        return {"scale": float(scale), "zero_point": int(zp), "dtype": d["dtype"].__name__}

    return {"input": {"name": "input", "shape": [int(v) for v in i["shape"]], "layout": "NCHW",
                      "dtype": i["dtype"].__name__, "quantization": q(i)},
            "output": {"name": "logits", "shape": [int(v) for v in o["shape"]], "dtype": o["dtype"].__name__,
                       "quantization": q(o)}}


def _write(job: Job) -> Written:
    buf = _convert(job)
    if job.precision == "int8" and job.config.tflite_io == "float":
        buf = float_io(buf)
    added = _io_details(buf)
    added["exporter"] = {**versions("litert-torch", "ai-edge-litert"), "route": "litert_torch.convert"
                         + (" (PT2E STATIC QDQ)" if job.precision == "int8" else ""),
                         "dynamic_batch": False,
                         "io": job.config.tflite_io if job.precision == "int8" else "float"}
    contract = {**job.contract, **added}
    buf = embed_metadata(buf, METADATA_KEY, contract_json(contract).encode())
    main = job.staging / f"{job.stem}.tflite"
    main.write_bytes(buf)
    return Written(main, [main], added)


EXPORTERS.register("tflite")(FormatSpec(
    name="tflite", suffix=".tflite", precisions=("fp32", "int8"), dynamic_batch=False,
    io_dtypes={"fp32": ("float32",), "int8": ("float32", "int8")},
    runtime="litert", backend="litert_torch", write=_write,
    notes="batch 1, NCHW input; int8 full-integer, float or int8 I/O (export.tflite_io)"))


def export(model, example_input, path: str | Path, config=None, **kwargs):
    """Write, verify and describe one TFLite artifact (see edgecnn.export.base.export_artifact)."""
    from edgecnn.export.base import export_artifact
    return export_artifact("tflite", model, example_input, path, config, **kwargs)
