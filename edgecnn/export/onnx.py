"""ONNX: `torch.onnx.export(..., dynamo=True)` from the same graph for every precision.

fp32: the float model, batch axis free ('batch'). int8: the PT2E-converted graph becomes a QDQ
model (QuantizeLinear/DequantizeLinear around float ops, int8 weights as initializers) that ONNX
Runtime and OpenVINO fuse into int8 kernels. fp16: fp32 export, then weights and compute cast to
float16 by onnxruntime's float16 converter with float32 input/output kept.
The opset is ExportConfig.opset or DEFAULT_OPSET, recorded in the contract; `onnx.checker` runs on
every file. The contract is embedded as metadata_props key `edgecnn_contract` (JSON).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

from edgecnn.export.base import EXPORTERS, FormatSpec, Job, Written, contract_json, versions

DEFAULT_OPSET = 18   # supported by ONNX Runtime >= 1.14, OpenVINO >= 2023.0 and TensorRT 8.6+
METADATA_KEY = "edgecnn_contract"


def to_onnx_proto(model: Any, example_input: Any, opset: int, dynamic_batch: bool):
    """The ModelProto of `model` (float module or PT2E graph); batch axis free when it can be."""
    import torch

    attempts = [True, False] if dynamic_batch else [False]
    last: Exception | None = None
    for dynamic in attempts:
        kwargs: dict[str, Any] = {}
        if dynamic:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1)},)
        try:
            # The dynamo exporter prints progress lines; library code stays silent (STYLE 4).
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                # A GraphModule from torch.export reports training=True; its ops are eval-only already.
                warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode")
                program = torch.onnx.export(model, (example_input,), dynamo=True, opset_version=opset,
                                            input_names=["input"], output_names=["logits"],
                                            external_data=False, verbose=False, optimize=True, **kwargs)
            return program.model_proto, dynamic
        except Exception as e:   # noqa: BLE001
            last = e
            # A PT2E graph exported with a fixed batch keeps that guard: retry with a static batch,
            # but only for shape errors; an unsupported operator fails the same way twice.
            if not dynamic or not _is_shape_error(e):
                raise
    raise last  # pragma: no cover


def job_proto(job: Job):
    """`to_onnx_proto` for a job: a fresh copy, converted once per `job.cache` (a failure too)."""
    import onnx

    opset = job.config.opset or DEFAULT_OPSET
    key = ("onnx", id(job.model), id(job.example_input), opset, job.config.dynamic_batch)
    cache = job.cache if job.cache is not None else {}
    if key not in cache:
        try:
            cache[key] = to_onnx_proto(job.model, job.example_input, opset, job.config.dynamic_batch)
        except Exception as e:   # noqa: BLE001  (re-raised below, and for the next format that asks)
            cache[key] = e
    hit = cache[key]
    if isinstance(hit, Exception):
        raise hit
    proto = onnx.ModelProto()
    proto.CopyFrom(hit[0])
    return proto, hit[1]


def _is_shape_error(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}"
    return any(k in text for k in ("Guard", "guard", "Constraint", "dynamic", "specializ", "Dim(", "batch"))


def finalize_proto(proto, contract: dict[str, Any]):
    """Drop what the exporter leaves that no runtime reads; embed the contract once.

    Measured on the default recipe's int8 file (55.0 kB before): per-node stack traces (a quarter
    of a small model's bytes), the ExportedProgram signature in graph metadata (2.4 kB), shape
    annotations of intermediate tensors (`value_info`, 3.4 kB: ONNX Runtime and OpenVINO infer
    shapes themselves), node names (1.1 kB; tensor names stay, and they name the same layers) and
    copies of contract fields as separate metadata keys (0.2 kB).
    """
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        node.name = ""
    for vi in list(proto.graph.input) + list(proto.graph.output):
        del vi.metadata_props[:]
    del proto.graph.value_info[:]
    del proto.graph.metadata_props[:]
    for init in proto.graph.initializer:
        del init.metadata_props[:]
    del proto.metadata_props[:]
    proto.metadata_props.add(key=METADATA_KEY, value=contract_json(contract))
    proto.producer_name = "edgecnn"
    proto.doc_string = f"edgecnn {contract.get('precision')} classifier"
    return proto


def io_contract(proto) -> dict[str, Any]:
    import onnx

    def shape(vi):
        return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]

    def dtype(vi):
        return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name

    i, o = proto.graph.input[0], proto.graph.output[0]
    return {"input": {"name": i.name, "shape": shape(i), "layout": "NCHW", "dtype": dtype(i), "quantization": None},
            "output": {"name": o.name, "shape": shape(o), "dtype": dtype(o), "quantization": None}}


def input_qparams(proto) -> dict[str, Any] | None:
    """Scale/zero point of the QuantizeLinear that reads the graph input (int8 QDQ), for the contract."""
    from onnx import numpy_helper

    name = proto.graph.input[0].name
    consts = {t.name: t for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = a.t
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] == name:
            s = numpy_helper.to_array(consts[n.input[1]]) if n.input[1] in consts else None
            z = numpy_helper.to_array(consts[n.input[2]]) if len(n.input) > 2 and n.input[2] in consts else None
            if s is None:
                return None
            return {"scale": float(s.reshape(-1)[0]), "zero_point": int(z.reshape(-1)[0]) if z is not None else 0,
                    "dtype": (z.dtype.name if z is not None else "uint8")}
    return None


def _write(job: Job) -> Written:
    import onnx

    cfg = job.config
    opset = cfg.opset or DEFAULT_OPSET
    proto, dynamic = job_proto(job)
    if job.precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # keep_io_types: callers feed float32 and read float32, the contract stays the same.
        proto = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=False)
        # The converter appends its input casts after their users; onnx.checker wants topological order.
        import onnx_ir as ir

        model_ir = ir.from_proto(proto)
        model_ir.graph.sort()
        proto = ir.to_proto(model_ir)
    added = io_contract(proto)
    qp = input_qparams(proto) if job.precision == "int8" else None
    if qp:
        # The input tensor stays float32 (quantization: null, nothing for an app to do); the first
        # QuantizeLinear's parameters are recorded apart for tools that compare scales across formats.
        added["input"]["internal_quantization"] = qp
    added["exporter"] = {**versions("onnx", "onnxscript"), "opset": opset, "dynamic_batch": dynamic,
                         "route": "torch.onnx.export(dynamo=True)" + (" + float16 converter" if job.precision == "fp16"
                                                                        else "")}
    if job.precision == "int8" and job.config.lowering:
        from edgecnn.export.lowering import lower_qdq, preset, resolve

        name = resolve(job.config.lowering)
        lowered = lower_qdq(proto, preset(name))
        proto = lowered.proto
        added["exporter"]["lowering"] = {"preset": name, **lowered.to_dict()}
        if job.config.lowering != name:
            added["exporter"]["lowering"]["asked"] = job.config.lowering
    contract = {**job.contract, **added}
    proto = finalize_proto(proto, contract)
    main = job.staging / f"{job.stem}.onnx"
    onnx.save_model(proto, str(main))
    onnx.checker.check_model(str(main), full_check=True)
    return Written(main, [main], added)


EXPORTERS.register("onnx")(FormatSpec(
    name="onnx", suffix=".onnx", precisions=("fp32", "fp16", "int8"), dynamic_batch=True,
    io_dtypes={"fp32": ("float32",), "fp16": ("float32",), "int8": ("float32",)},
    runtime="onnxruntime", backend="onnx", write=_write,
    notes="int8 as QDQ (per-channel int8 weights, int8 activations); fp16 keeps float32 I/O"))


def export(model, example_input, path: str | Path, config=None, **kwargs):
    """Write, verify and describe one ONNX artifact (see edgecnn.export.base.export_artifact)."""
    from edgecnn.export.base import export_artifact
    return export_artifact("onnx", model, example_input, path, config, **kwargs)
