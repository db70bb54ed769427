"""TFLite via litert-torch (placeholder while the writer is built)."""
from __future__ import annotations

from edgecnn.export.base import EXPORTERS, FormatSpec, Job, Written


def _write(job: Job) -> Written:
    raise NotImplementedError("tflite writer")


EXPORTERS.register("tflite")(FormatSpec(
    name="tflite", suffix=".tflite", precisions=("fp32", "int8"), dynamic_batch=False,
    io_dtypes={"fp32": ("float32",), "int8": ("float32", "int8")},
    runtime="litert", backend="litert_torch", write=_write))
