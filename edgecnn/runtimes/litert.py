"""LiteRT (TFLite) adapter: `ai_edge_litert`, or `tflite_runtime` where only that is installed.

device: 'cpu'. options: xnnpack (bool, default True: the XNNPACK CPU delegate that LiteRT applies
by default; False runs the reference builtin kernels).
Quantized (int8/uint8) input and output tensors are handled with the scale and zero point the
.tflite file stores; NHWC inputs are transposed from NCHW.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgecnn.runtimes import RUNTIMES, RuntimeSpec, Session, dequantize_output, quantize_input


def _interpreter_cls():
    try:
        from ai_edge_litert import interpreter as mod
        return mod, "ai_edge_litert"
    except ImportError:
        from tflite_runtime import interpreter as mod   # older devices; same Interpreter API
        return mod, "tflite_runtime"


class LiteRTSession(Session):
    runtime = "litert"

    def __init__(self, path, contract: dict[str, Any], *, threads: int | None = None, device: str | None = None,
                 xnnpack: bool = True):
        super().__init__()
        mod, backend = _interpreter_cls()
        kwargs: dict[str, Any] = {"model_path": str(path), "num_threads": threads}
        resolver = getattr(mod, "OpResolverType", None)
        if resolver is not None:
            kwargs["experimental_op_resolver_type"] = (
                resolver.AUTO if xnnpack else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self._it = mod.Interpreter(**kwargs)
        self._it.allocate_tensors()
        self._in = self._it.get_input_details()[0]
        self._out = self._it.get_output_details()[0]
        shape = list(self._in["shape"])
        self.batch_size = int(shape[0]) if shape[0] > 0 else None
        layout = contract.get("input", {}).get("layout")
        if layout is None:   # no contract: NHWC when the last axis looks like channels and axis 1 does not
            layout = "NHWC" if shape[-1] in (1, 3) and shape[1] not in (1, 3) else "NCHW"
        self.input_layout = layout
        version = getattr(mod, "__version__", None)
        if version is None:
            try:
                from importlib.metadata import version as _v
                version = _v("ai-edge-litert" if backend == "ai_edge_litert" else "tflite-runtime")
            except Exception:   # noqa: BLE001
                version = "unknown"
        self.info = {"runtime": "litert", "version": version, "device": "cpu", "threads": threads,
                     "providers": [backend + ("+xnnpack" if xnnpack else "")], "options": {"xnnpack": xnnpack}}

    def _run_batch(self, x: np.ndarray) -> np.ndarray:
        dtype = self._in["dtype"]
        if dtype in (np.int8, np.uint8):
            scale, zp = self._in["quantization"]
            x = quantize_input(x, dtype, scale, zp)
        elif dtype != np.float32:
            x = x.astype(dtype)
        self._it.set_tensor(self._in["index"], x)
        self._it.invoke()
        y = self._it.get_tensor(self._out["index"])
        if self._out["dtype"] in (np.int8, np.uint8):
            scale, zp = self._out["quantization"]
            return dequantize_output(y, scale, zp)
        return y.astype(np.float32)

    def close(self) -> None:
        self._it = None


def _open(source, contract, *, threads=None, device=None, **options) -> Session:
    return LiteRTSession(source, contract, threads=threads, device=device, **options)


RUNTIMES.register("litert")(RuntimeSpec("litert", "ai_edge_litert|tflite_runtime", ("tflite",), ("cpu",), _open))
