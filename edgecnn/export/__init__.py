"""Exporters: ONNX, OpenVINO IR and TFLite from the same graph, each artifact verified and self-describing.

    from edgecnn.export import ExportConfig, export_all, export_model, check_model, Artifact, FORMATS

    artifacts = export_all(float_model, quantized_or_None, data, out_dir, ExportConfig())
    art = export_model("onnx", model, example_input, "out/model.onnx", ExportConfig(), precision="fp32")
    art = Artifact.load("out/model_fp32.onnx")        # or the .json sidecar
    report = check_model(model, (1, 28, 28), ["onnx", "openvino", "tflite"])

One module per format (`onnx`, `openvino`, `tflite`), each registering a `FormatSpec` (precisions,
dynamic batch, I/O dtypes: data, see `FORMATS`) and offering `export(model, example_input, path,
config, *, precision=None, meta=None, verify_inputs=None) -> Artifact`. fp32/fp16 artifacts come
from the float model, int8 from the PT2E-converted graph (`edgecnn.compress.quantize`). Every
artifact is loaded in its runtime (`edgecnn.runtimes`) and compared with PyTorch before its files
get their final names; the contract goes into a `<file>.json` sidecar and into the file where the
format has room. Backends (onnx, openvino, litert_torch) load only when an export runs.
"""
from __future__ import annotations

from typing import Any

from edgecnn.export import onnx as _onnx  # noqa: F401  (registers the format; light)
from edgecnn.export import openvino as _openvino  # noqa: F401
from edgecnn.export import tflite as _tflite  # noqa: F401
from edgecnn.export.artifact import SCHEMA, Artifact
from edgecnn.export.base import EXPORTERS, FormatSpec, export_artifact, is_quantized
from edgecnn.export.config import PRECISIONS, ExportConfig
from edgecnn.export.preflight import CheckReport, check_model
from edgecnn.export.run import contract_meta, export_all, export_stage

__all__ = ["Artifact", "ExportConfig", "EXPORTERS", "FORMATS", "FormatSpec", "PRECISIONS", "SCHEMA",
           "CheckReport", "check_model", "contract_meta", "export_all", "export_model", "export_stage",
           "formats_table", "is_quantized"]

FORMATS = EXPORTERS


def export_model(fmt: str, model: Any, example_input: Any, path, config: ExportConfig | None = None,
                 **kwargs: Any) -> Artifact:
    """One format: write, verify, describe. kwargs: precision, meta, verify_inputs, reference."""
    return export_artifact(fmt, model, example_input, path, config, **kwargs)


def formats_table() -> list[dict[str, Any]]:
    """The format table as rows (for `edgecnn export --help` and docs)."""
    return [{"format": s.name, "suffix": s.suffix, "precisions": list(s.precisions),
             "dynamic_batch": s.dynamic_batch, "io_dtypes": {k: list(v) for k, v in s.io_dtypes.items()},
             "runtime": s.runtime, "notes": s.notes} for s in (EXPORTERS.get(n) for n in EXPORTERS.names())]
