"""ONNX Runtime adapter.

device: 'cpu' (CPUExecutionProvider), 'cuda', 'tensorrt', 'openvino' (those execution providers,
when the installed onnxruntime build has them; the CPU EP stays as the fallback).
options: providers (an explicit list, overrides device), graph_optimization_level
('all' | 'extended' | 'basic' | 'disable', default 'all'), inter_op_threads.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgecnn.errors import EdgecnnError, unknown
from edgecnn.runtimes import RUNTIMES, RuntimeSpec, Session, dequantize_output, quantize_input

_DEVICE_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "openvino": ["OpenVINOExecutionProvider", "CPUExecutionProvider"],
}
_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
           "disable": "ORT_DISABLE_ALL"}
_NP = {"tensor(float)": np.float32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
       "tensor(float16)": np.float16}


class OrtSession(Session):
    runtime = "onnxruntime"

    def __init__(self, path, contract: dict[str, Any], *, threads: int | None = None, device: str | None = None,
                 providers: list[str] | None = None, graph_optimization_level: str = "all",
                 inter_op_threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        device = (device or "cpu").lower()
        if providers is None:
            providers = _DEVICE_PROVIDERS[device]
        have = ort.get_available_providers()
        missing = [p for p in providers if p not in have]
        if missing:
            raise EdgecnnError(f"onnxruntime {ort.__version__} here has no {', '.join(missing)} "
                               f"(it has {', '.join(have)}). Install the onnxruntime build for that device "
                               "(e.g. onnxruntime-gpu, onnxruntime-openvino) or use device='cpu'.")
        if graph_optimization_level not in _LEVELS:
            raise unknown("graph optimization level", graph_optimization_level, _LEVELS,
                          "graph_optimization_level")
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[graph_optimization_level])
        if threads is not None:
            so.intra_op_num_threads = threads
        if inter_op_threads is not None:
            so.inter_op_num_threads = inter_op_threads
        so.log_severity_level = 3
        self._sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        inp, out = self._sess.get_inputs()[0], self._sess.get_outputs()[0]
        self._in_name, self._out_name = inp.name, out.name
        self._in_dtype, self._out_dtype = _NP.get(inp.type, np.float32), _NP.get(out.type, np.float32)
        b = inp.shape[0]
        self.batch_size = b if isinstance(b, int) and b > 0 else None
        self.input_layout = contract.get("input", {}).get("layout", "NCHW")
        self._in_q = contract.get("input", {}).get("quantization")
        self._out_q = contract.get("output", {}).get("quantization")
        if self._in_dtype in (np.int8, np.uint8) and not self._in_q:
            raise EdgecnnError(f"{path}: the input is {inp.type} but no scale/zero point is known. "
                               "Open it through its .json sidecar.")
        self.info = {"runtime": "onnxruntime", "version": ort.__version__, "device": device,
                     "threads": threads, "providers": self._sess.get_providers(),
                     "options": {"graph_optimization_level": graph_optimization_level}}

    def _run_batch(self, x: np.ndarray) -> np.ndarray:
        if self._in_dtype in (np.int8, np.uint8):
            x = quantize_input(x, self._in_dtype, self._in_q["scale"], self._in_q["zero_point"])
        elif self._in_dtype == np.float16:
            x = x.astype(np.float16)
        y = self._sess.run([self._out_name], {self._in_name: x})[0]
        if self._out_dtype in (np.int8, np.uint8):
            return dequantize_output(y, self._out_q["scale"], self._out_q["zero_point"])
        return y.astype(np.float32)

    def close(self) -> None:
        self._sess = None


def _open(source, contract, *, threads=None, device=None, **options) -> Session:
    return OrtSession(source, contract, threads=threads, device=device, **options)


RUNTIMES.register("onnxruntime")(RuntimeSpec("onnxruntime", "onnxruntime", ("onnx",),
                                             tuple(_DEVICE_PROVIDERS), _open))
