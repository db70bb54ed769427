"""One interface over every runtime: any batch size in, float32 logits out, info and load time recorded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecnn.errors import EdgecnnError, RecipeError
from edgecnn.export import EXPORTERS
from edgecnn.runtimes import (RUNTIMES, Session, available, dequantize_output, open_session, quantize_input,
                              runtimes_for_format)

INFO_KEYS = {"runtime", "version", "device", "threads", "providers"}
# (runtime, format) pairs an adapter can open, from the registries.
PAIRS = [(r, f) for r in RUNTIMES.names() for f in EXPORTERS.names() if f in RUNTIMES.get(r).formats]


@pytest.mark.parametrize("name", RUNTIMES.names())
def test_runtime_is_registered_and_installed(name):
    spec = RUNTIMES.get(name)
    assert spec.formats and spec.devices
    assert available(name)


@pytest.mark.parametrize("runtime,fmt", PAIRS)
@pytest.mark.parametrize("batch", [1, 4, 9])
def test_any_batch_gives_torch_logits(fp32_artifacts, small_model, inputs, runtime, fmt, batch):
    x = inputs[:batch]
    ref = small_model(torch.from_numpy(x)).detach().numpy()
    opts = {"inference_precision": "f32"} if runtime == "openvino" else {}
    with open_session(fp32_artifacts[fmt], runtime, threads=1, **opts) as s:
        out = s.run(x)
        assert INFO_KEYS <= set(s.info) and s.info["runtime"] == runtime
        assert s.load_seconds > 0
    assert out.dtype == np.float32 and out.shape == (batch, 10)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_torch_runtime_on_a_module(small_model, inputs):
    with open_session(small_model, threads=1) as s:
        assert s.info["runtime"] == "torch" and s.info["device"] == "cpu"
        out = s.run(inputs)
    np.testing.assert_allclose(out, small_model(torch.from_numpy(inputs)).detach().numpy(), atol=1e-6)
    with open_session(small_model, dtype="bf16", batch_size=4) as s:
        assert np.abs(s.run(inputs) - out).max() < 0.1


def test_opens_by_path_and_by_sidecar(fp32_artifacts, inputs):
    art = fp32_artifacts["onnx"]
    a = open_session(art.path).run(inputs)
    b = open_session(art.sidecar).run(inputs)
    np.testing.assert_array_equal(a, b)


def test_default_runtime_per_format():
    assert runtimes_for_format("onnx")[0] == "onnxruntime" and "openvino" in runtimes_for_format("onnx")
    assert runtimes_for_format("tflite") == ["litert"]
    assert runtimes_for_format("openvino") == ["openvino"]


def test_errors_name_the_fix(fp32_artifacts, tmp_path):
    with pytest.raises(RecipeError, match="Did you mean 'onnxruntime'"):
        open_session(fp32_artifacts["onnx"], "onnxruntim")
    with pytest.raises(EdgecnnError, match="cannot open a tflite artifact"):
        open_session(fp32_artifacts["tflite"], "onnxruntime")
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(EdgecnnError, match="has no CUDAExecutionProvider"):
            open_session(fp32_artifacts["onnx"], device="cuda")
    with pytest.raises(EdgecnnError, match="no such artifact"):
        open_session(tmp_path / "missing.onnx")
    with pytest.raises(EdgecnnError, match="cannot tell the artifact format"):
        (tmp_path / "x.bin").write_bytes(b"0")
        open_session(tmp_path / "x.bin")
    with pytest.raises(RecipeError, match="device"):
        open_session(fp32_artifacts["onnx"], device="tpu")


class _FixedBatchNHWC(Session):
    """A fake runtime with a fixed batch of 4 and NHWC input: the base class must adapt."""

    runtime = "fake"

    def __init__(self):
        super().__init__()
        self.batch_size, self.input_layout, self.seen = 4, "NHWC", []

    def _run_batch(self, x):
        assert x.shape[0] == 4 and x.shape[3] == 3
        self.seen.append(x.shape)
        return x.mean(axis=(1, 2))


def test_fixed_batch_and_nhwc_are_handled_by_the_base_class():
    x = np.random.default_rng(1).standard_normal((10, 3, 5, 5)).astype(np.float32)
    s = _FixedBatchNHWC()
    out = s.run(x)
    assert out.shape == (10, 3) and len(s.seen) == 3
    np.testing.assert_allclose(out, x.mean(axis=(2, 3)), atol=1e-6)


def test_quantize_roundtrip():
    x = np.linspace(-3, 3, 101, dtype=np.float32)
    q = quantize_input(x, np.int8, 0.05, -3)
    assert q.dtype == np.int8 and q.min() >= -128 and q.max() <= 127
    back = dequantize_output(q, 0.05, -3)
    inside = (x > (-128 + 3) * 0.05) & (x < (127 + 3) * 0.05)
    assert np.abs(back - x)[inside].max() <= 0.025 + 1e-6
