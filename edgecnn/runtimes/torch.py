"""PyTorch eager (or torch.compile) runtime: an nn.Module, or a torch.export `.pt2` program.

options: dtype ('fp32' | 'fp16' | 'bf16': the compute precision; input and output stay float32),
compile (bool: wrap in torch.compile), batch_size (run in chunks of this size; None: whole array).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgecnn.errors import EdgecnnError, unknown
from edgecnn.runtimes import RUNTIMES, RuntimeSpec, Session

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchSession(Session):
    runtime = "torch"

    def __init__(self, source: Any, contract: dict[str, Any], *, threads: int | None = None,
                 device: str | None = None, dtype: str = "fp32", compile: bool = False,
                 batch_size: int | None = None):
        super().__init__()
        import torch

        if dtype not in _DTYPES:
            raise unknown("torch dtype", dtype, _DTYPES, "dtype")
        dev = torch.device(device or "cpu")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise EdgecnnError("torch runtime: device 'cuda' was asked for but torch sees no CUDA GPU. "
                               "Use device='cpu'.")
        if threads is not None:
            torch.set_num_threads(threads)
        if isinstance(source, torch.nn.Module):
            model = source
        else:
            model = torch.export.load(str(source)).module()
        self._is_graph = isinstance(model, torch.fx.GraphModule)
        self._dtype = getattr(torch, _DTYPES[dtype])
        if not self._is_graph:
            model = model.eval()
        model = model.to(dev)
        if dtype != "fp32":
            model = model.to(self._dtype)
        self._model = torch.compile(model) if compile else model
        self._device = dev
        self.batch_size = batch_size
        self.info = {"runtime": "torch", "version": torch.__version__, "device": str(dev),
                     "threads": torch.get_num_threads(), "providers": [f"eager:{dtype}" + (
                         "+compile" if compile else "")], "options": {"dtype": dtype, "compile": compile}}

    def _run_batch(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            t = torch.from_numpy(x).to(self._device, self._dtype)
            y = self._model(t)
            if isinstance(y, (tuple, list)):
                y = y[0]
            return y.float().cpu().numpy()


def _open(source, contract, *, threads=None, device=None, **options) -> Session:
    return TorchSession(source, contract, threads=threads, device=device, **options)


RUNTIMES.register("torch")(RuntimeSpec("torch", "torch", ("torch",), ("cpu", "cuda"), _open))
