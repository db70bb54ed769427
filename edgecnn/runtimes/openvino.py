"""OpenVINO adapter: IR (.xml + .bin) or ONNX files.

device: CPU | GPU | NPU | AUTO (also 'GPU.1', 'AUTO:GPU,CPU', ...).
options: performance_hint ('LATENCY' | 'THROUGHPUT' | 'CUMULATIVE_THROUGHPUT'; default LATENCY),
inference_precision ('f32' | 'bf16' | 'f16'; default: the device's choice, which is bf16 on CPUs
with AMX: pass 'f32' to compare fp32 numbers exactly), config (extra compile properties).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgecnn.errors import unknown
from edgecnn.runtimes import RUNTIMES, RuntimeSpec, Session, dequantize_output, quantize_input

_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


class OpenVINOSession(Session):
    runtime = "openvino"

    def __init__(self, path, contract: dict[str, Any], *, threads: int | None = None, device: str | None = None,
                 performance_hint: str = "LATENCY", inference_precision: str | None = None,
                 config: dict[str, Any] | None = None):
        super().__init__()
        import openvino as ov

        device = (device or "CPU").upper()
        if performance_hint.upper() not in _HINTS:
            raise unknown("performance hint", performance_hint, _HINTS, "performance_hint")
        core = ov.Core()
        model = core.read_model(str(path))
        props: dict[str, Any] = {"PERFORMANCE_HINT": performance_hint.upper()}
        if threads is not None and device.startswith("CPU"):
            props["INFERENCE_NUM_THREADS"] = int(threads)
        if inference_precision is not None:
            props["INFERENCE_PRECISION_HINT"] = inference_precision
        props.update(config or {})
        self._compiled = core.compile_model(model, device, props)
        self._req = self._compiled.create_infer_request()
        inp = self._compiled.input(0)
        ps = inp.get_partial_shape()
        self.batch_size = None if ps[0].is_dynamic else ps[0].get_length()
        self._in_dtype = np.dtype(inp.get_element_type().to_dtype())
        self._out_dtype = np.dtype(self._compiled.output(0).get_element_type().to_dtype())
        self.input_layout = contract.get("input", {}).get("layout", "NCHW")
        self._in_q = contract.get("input", {}).get("quantization")
        self._out_q = contract.get("output", {}).get("quantization")
        try:
            used_threads = self._compiled.get_property("INFERENCE_NUM_THREADS")
        except Exception:   # noqa: BLE001  (not every device reports it)
            used_threads = threads
        try:
            p = self._compiled.get_property("INFERENCE_PRECISION_HINT")
            precision = p.to_string() if hasattr(p, "to_string") else str(p)
        except Exception:   # noqa: BLE001
            precision = inference_precision
        self.info = {"runtime": "openvino", "version": ov.get_version(), "device": device,
                     "threads": used_threads, "providers": [device],
                     "options": {"performance_hint": performance_hint.upper(), "inference_precision": precision}}

    def _run_batch(self, x: np.ndarray) -> np.ndarray:
        if self._in_dtype in (np.int8, np.uint8):
            x = quantize_input(x, self._in_dtype, self._in_q["scale"], self._in_q["zero_point"])
        elif self._in_dtype != np.float32:
            x = x.astype(self._in_dtype)
        y = self._req.infer({0: x})[self._compiled.output(0)]
        if self._out_dtype in (np.int8, np.uint8):
            return dequantize_output(y, self._out_q["scale"], self._out_q["zero_point"])
        return np.array(y, dtype=np.float32)

    def close(self) -> None:
        self._req = self._compiled = None


def _open(source, contract, *, threads=None, device=None, **options) -> Session:
    return OpenVINOSession(source, contract, threads=threads, device=device, **options)


RUNTIMES.register("openvino")(RuntimeSpec("openvino", "openvino", ("openvino", "onnx"),
                                          ("CPU", "GPU", "NPU", "AUTO", "HETERO", "MULTI"), _open))
