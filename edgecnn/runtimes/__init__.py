"""Runtime adapters: load an artifact in its runtime and run float32 NCHW batches.

One interface for every runtime, so verification (export) and measurement (bench) share it:

    session = open_session(artifact_or_path, runtime=None, *, threads=None, device=None, **options)
    logits = session.run(x)        # x: np.ndarray float32 (N, C, H, W), normalized as the contract says
                                   # -> np.ndarray float32 (N, num_classes)
    session.info                   # {"runtime", "version", "device", "threads", "providers", "options", ...}
    session.load_seconds           # wall seconds to load/compile the artifact
    session.close()                # also a context manager

`artifact_or_path` is an `edgecnn.export.Artifact`, a path to an artifact file or its `.json`
sidecar, or (torch runtime) an `nn.Module`. `runtime=None` picks the format's own runtime:
onnx -> onnxruntime, openvino -> openvino, tflite -> litert, a module -> torch. ONNX files also
open in `openvino`.

The adapter hides what differs between runtimes: int8/uint8 input or output tensors are
quantized/dequantized with the scale and zero point stored in the model (or its contract); an
NHWC input is transposed; a model with a fixed batch size is run in chunks of that size (the last
chunk padded). `x` of any batch size works everywhere.

Registered runtimes (`RUNTIMES.names()`): torch, onnxruntime, openvino, litert. Backends are imported
only when a session is opened; `available(name)` says whether one is installed.
"""
from __future__ import annotations

import importlib
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecnn.errors import EdgecnnError, unknown
from edgecnn.registry import Registry

__all__ = ["Session", "RuntimeSpec", "RUNTIMES", "open_session", "available", "runtimes_for_format",
           "format_of_path"]


class Session:
    """A loaded model. Subclasses implement `_run_batch` (one chunk the model accepts)."""

    runtime: str = ""

    def __init__(self):
        self.info: dict[str, Any] = {}
        self.load_seconds: float = 0.0
        self.batch_size: int | None = None    # fixed batch of the loaded model; None: any
        self.input_layout: str = "NCHW"

    def run(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW -> float32 logits, any batch size."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4:
            raise EdgecnnError(f"{self.runtime}: input must be a 4-D NCHW float32 array, got shape {x.shape}.")
        if self.input_layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        n = x.shape[0]
        b = self.batch_size
        if b is None or b == n:
            return np.asarray(self._run_batch(x), dtype=np.float32)
        outs = []
        for i in range(0, n, b):
            chunk = x[i:i + b]
            k = len(chunk)
            if k < b:   # pad the last chunk to the model's fixed batch; padding rows are dropped
                chunk = np.concatenate([chunk, np.zeros((b - k, *chunk.shape[1:]), np.float32)])
            outs.append(np.asarray(self._run_batch(chunk), dtype=np.float32)[:k])
        return np.concatenate(outs)

    def _run_batch(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.info}>"


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    module: str                              # python module of the backend (for `available`)
    formats: tuple[str, ...]                 # artifact formats it opens
    devices: tuple[str, ...]                 # device names the adapter understands
    open: Callable[..., Session]             # open(source, contract, *, threads, device, **options)


RUNTIMES: Registry[RuntimeSpec] = Registry("runtime")

_DEFAULT_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert", "torch": "torch"}
_SUFFIX_FORMAT = {".onnx": "onnx", ".xml": "openvino", ".tflite": "tflite", ".pt2": "torch"}


def available(name: str) -> bool:
    """Whether runtime `name`'s backend is importable here (without importing it)."""
    spec = RUNTIMES.get(name)
    mods = spec.module.split("|")
    return any(importlib.util.find_spec(m) is not None for m in mods)


def runtimes_for_format(fmt: str) -> list[str]:
    """Runtimes able to open `fmt`, the format's own runtime first."""
    names = [n for n in RUNTIMES.names() if fmt in RUNTIMES.get(n).formats]
    own = _DEFAULT_RUNTIME.get(fmt)
    return sorted(names, key=lambda n: n != own)


def format_of_path(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMAT:
        raise EdgecnnError(f"{path}: cannot tell the artifact format from '{suffix}'. "
                           f"Known: {', '.join(sorted(_SUFFIX_FORMAT))} (or give the .json sidecar).")
    return _SUFFIX_FORMAT[suffix]


def _resolve(source: Any) -> tuple[Any, str, dict[str, Any]]:
    """-> (what the adapter loads, format, contract dict)."""
    import torch.nn  # noqa: F401  (light: torch is already a dependency of edgecnn)

    if isinstance(source, torch.nn.Module):
        return source, "torch", {}
    # An Artifact without importing edgecnn.export (which imports this module).
    if hasattr(source, "contract") and hasattr(source, "path"):
        return Path(source.path), source.format, dict(source.contract)
    path = Path(source)
    if path.suffix == ".json" or (path.with_name(path.name + ".json")).exists():
        from edgecnn.export.artifact import Artifact
        art = Artifact.load(path)
        return Path(art.path), art.format, dict(art.contract)
    if not path.exists():
        raise EdgecnnError(f"{path}: no such artifact file.")
    return path, format_of_path(path), {}


def open_session(artifact_or_path: Any, runtime: str | None = None, *, threads: int | None = None,
                 device: str | None = None, **options: Any) -> Session:
    """Load an artifact (or module) in a runtime; see the module docstring for the contract."""
    source, fmt, contract = _resolve(artifact_or_path)
    name = runtime or _DEFAULT_RUNTIME.get(fmt)
    spec = RUNTIMES.get(name, key="runtime")
    if fmt not in spec.formats:
        raise EdgecnnError(f"runtime '{name}' cannot open a {fmt} artifact ({source}). "
                           f"Runtimes for {fmt}: {', '.join(runtimes_for_format(fmt)) or 'none'}.")
    if threads is not None and threads < 1:
        raise EdgecnnError(f"threads: {threads} must be >= 1 (or None for the runtime's default).")
    if device is not None and device.split(":")[0].upper() not in {d.upper() for d in spec.devices}:
        raise unknown(f"{name} device", device, spec.devices, "device")
    if not available(name):
        raise EdgecnnError(f"runtime '{name}' is not installed here (python module {spec.module}). "
                           f"pip install {spec.module.split('|')[0].replace('_', '-')}")
    t0 = time.perf_counter()
    session = spec.open(source, contract, threads=threads, device=device, **options)
    session.load_seconds = time.perf_counter() - t0
    session.info.setdefault("runtime", name)
    session.info.setdefault("format", fmt)
    return session


def quantize_input(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """float -> int8/uint8 with the tensor's own scale and zero point (round half to even, as runtimes do)."""
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _register_builtin() -> None:
    # Adapter modules are light: each imports its backend inside `open`.
    for mod in ("torch", "onnxruntime", "openvino", "litert"):
        importlib.import_module(f"edgecnn.runtimes.{mod}")


_register_builtin()
