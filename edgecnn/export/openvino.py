"""OpenVINO IR (.xml + .bin) through the ONNX of the same graph.

The route is PyTorch -> ONNX (edgecnn.export.onnx) -> `openvino.convert_model` -> `save_model`:
on this machine convert_model on a PT2E program failed to compile on CPU while the QDQ ONNX of the
same graph compiled (docs ARCHITECTURE "Seen on this machine"). QDQ pairs become FakeQuantize,
which the CPU plugin runs as int8. fp16: fp32 graph with weights compressed to float16
(`compress_to_fp16`), computed at the device's precision. When the ONNX step fails (an operator
ONNX cannot express), the float model goes through OpenVINO's own PyTorch frontend instead.
The contract is embedded as rt_info key `edgecnn_contract` (JSON). The .xml is written without
indentation (`compact_xml`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecnn.export.base import EXPORTERS, FormatSpec, Job, Written, contract_json, versions
from edgecnn.io import write_text

METADATA_KEY = "edgecnn_contract"


def _convert(job: Job):
    import openvino as ov

    from edgecnn.export.onnx import DEFAULT_OPSET, job_proto

    opset = job.config.opset or DEFAULT_OPSET
    try:
        proto, dynamic = job_proto(job)
    except Exception as onnx_error:   # noqa: BLE001
        if job.precision == "int8":
            raise
        try:
            model = ov.convert_model(job.model, example_input=job.example_input)
        except Exception:   # noqa: BLE001  (report the first failure: it names the operator)
            raise onnx_error from None
        return model, "openvino.convert_model(torch)", None
    import onnx

    if job.precision == "int8" and job.config.openvino_lowering:
        from edgecnn.export.lowering import lower_qdq, preset

        proto = lower_qdq(proto, preset(job.config.openvino_lowering)).proto
    tmp = job.staging / f".{job.stem}.intermediate.onnx"
    onnx.save_model(proto, str(tmp))
    try:
        model = ov.convert_model(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    return model, "torch.onnx.export(dynamo=True) -> openvino.convert_model(onnx)", opset


def share_constants(model) -> int:
    """Make equal constants one node: returns how many reads were moved to an earlier equal constant.

    The ONNX frontend gives each FakeQuantize four constants of its own, although a QDQ pair's input
    and output ranges are the same numbers and consecutive pairs often share them too: on the
    default recipe's int8 IR that is 38 of 75 constants and 11 kB of its 61 kB .xml (the .bin stores
    equal data once already). Values and results do not change.
    """
    import numpy as np

    seen: dict[tuple, Any] = {}
    moved = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        key = (str(op.get_element_type()), tuple(op.get_output_partial_shape(0).to_shape()),
               np.ascontiguousarray(op.get_data()).tobytes())
        first = seen.setdefault(key, op)
        if first is op:
            continue
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(first.output(0))
            moved += 1
    return moved


def compact_xml(text: str) -> str:
    """The IR's .xml without the serializer's indentation: the same XML document (same elements,
    attributes and values; only whitespace between tags and before '/>' goes).

    `save_model` indents every element on its own line, a sixth of a small int8 IR's .xml.
    A literal '<' or '"' cannot occur inside an attribute value (they are escaped), so '>' + blanks +
    '<' lies between elements and '"' + blanks + '/>' ends a tag. The result is parsed back and
    compared element by element; on any difference the text is returned as it was.
    """
    import re

    out = re.sub(r'"[ \t]+/>', '"/>', re.sub(r">\s+<", "><", text))
    return out if _same_xml(text, out) else text


def _same_xml(a: str, b: str) -> bool:
    import xml.etree.ElementTree as ET

    def same(x, y) -> bool:   # blank-only text is dropped by OpenVINO's parser (pugixml's default) too
        return (x.tag == y.tag and x.attrib == y.attrib and (x.text or "").strip() == (y.text or "").strip()
                and (x.tail or "").strip() == (y.tail or "").strip()
                and len(x) == len(y) and all(same(c, d) for c, d in zip(x, y)))

    try:
        return same(ET.fromstring(a.encode()), ET.fromstring(b.encode()))
    except ET.ParseError:
        return False


def _write(job: Job) -> Written:
    import openvino as ov

    model, route, opset = _convert(job)
    share_constants(model)
    rt = model.get_rt_info()
    if "conversion_parameters" in rt:   # the scratch path of the intermediate ONNX file: nothing to keep
        del rt["conversion_parameters"]
    if "Runtime_version" in rt:   # the same version string save_model writes as <info name="OpenVINO Runtime">
        del rt["Runtime_version"]
    inp, out = model.inputs[0], model.outputs[0]
    model.inputs[0].get_tensor().set_names({"input"})
    model.outputs[0].get_tensor().set_names({"logits"})
    shape = [None if d.is_dynamic else d.get_length() for d in inp.get_partial_shape()]
    oshape = [None if d.is_dynamic else d.get_length() for d in out.get_partial_shape()]
    added = {"input": {"name": "input", "shape": shape, "layout": "NCHW",
                       "dtype": inp.get_element_type().to_dtype().name, "quantization": None},
             "output": {"name": "logits", "shape": oshape, "dtype": out.get_element_type().to_dtype().name,
                        "quantization": None},
             "exporter": {**versions("openvino", "onnx"), "route": route, "opset": opset,
                          "dynamic_batch": shape[0] is None,
                          "compress_to_fp16": job.precision == "fp16"}}
    contract = {**job.contract, **added}
    model.set_rt_info(contract_json(contract), [METADATA_KEY])
    main = job.staging / f"{job.stem}.xml"
    ov.save_model(model, str(main), compress_to_fp16=job.precision == "fp16")
    write_text(main, compact_xml(main.read_text(encoding="utf-8")))
    return Written(main, [main, main.with_suffix(".bin")], added)


EXPORTERS.register("openvino")(FormatSpec(
    name="openvino", suffix=".xml", precisions=("fp32", "fp16", "int8"), dynamic_batch=True,
    io_dtypes={"fp32": ("float32",), "fp16": ("float32",), "int8": ("float32",)},
    runtime="openvino", backend="openvino", write=_write,
    notes="IR v11 (.xml + .bin); int8 as FakeQuantize from the QDQ ONNX; fp16 = fp16-compressed weights"))


def export(model, example_input, path: str | Path, config=None, **kwargs):
    """Write, verify and describe one OpenVINO IR artifact (see edgecnn.export.base.export_artifact)."""
    from edgecnn.export.base import export_artifact
    return export_artifact("openvino", model, example_input, path, config, **kwargs)
