"""Errors name what and where; a failed export leaves no file behind."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from edgecnn.config import from_dict
from edgecnn.errors import ExportError, RecipeError
from edgecnn.export import ExportConfig, export_model


class Erfinv(nn.Module):
    def forward(self, x):
        return torch.erfinv(torch.tanh(x) * 0.9)


class NetWithErfinv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = Erfinv()
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


@pytest.mark.slow   # tries all three converters: ~30 s
def test_unsupported_operator_names_op_module_and_alternatives(tmp_path):
    with pytest.raises(ExportError) as e:
        export_model("tflite", NetWithErfinv().eval(), torch.randn(1, 1, 8, 8), tmp_path / "m", ExportConfig())
    msg = str(e.value)
    assert "aten.erfinv" in msg and "act (Erfinv)" in msg
    assert "Formats that accept this model: openvino" in msg    # OpenVINO's PyTorch frontend has erfinv
    assert list(tmp_path.iterdir()) == []


def test_failed_verification_leaves_nothing_and_says_by_how_much(tmp_path, quantized_model, data):
    cfg = ExportConfig(formats=["onnx"], int8_tolerance=1e-9)    # no int8 runtime is that exact
    with pytest.raises(ExportError) as e:
        export_model("onnx", quantized_model, data.example_input(1), tmp_path / "m.onnx", cfg)
    msg = str(e.value)
    assert "over the tolerance" in msg and "x)" in msg and "Nothing was written" in msg
    assert list(tmp_path.iterdir()) == []      # no artifact, no sidecar, no staging folder


def test_int8_needs_a_quantized_model(tmp_path, float_model, data):
    with pytest.raises(ExportError, match="not quantized"):
        export_model("onnx", float_model, data.example_input(1), tmp_path / "m.onnx", ExportConfig(),
                     precision="int8")
    assert list(tmp_path.iterdir()) == []


def test_precision_a_format_lacks(tmp_path, float_model, data):
    with pytest.raises(ExportError, match="not available for tflite"):
        export_model("tflite", float_model, data.example_input(1), tmp_path / "m", ExportConfig(), precision="fp16")


def test_config_validation_names_the_key():
    with pytest.raises(RecipeError, match=r"formats\[0\].*Did you mean 'onnx'"):
        ExportConfig(formats=["onxx"])
    with pytest.raises(RecipeError, match="precisions"):
        from_dict(ExportConfig, {"precisions": ["int4"]}, key="export")
    with pytest.raises(RecipeError, match="tflite_io"):
        from_dict(ExportConfig, {"tflite_io": "uint8"}, key="export")
    with pytest.raises(RecipeError, match="Did you mean 'verify_samples'"):
        from_dict(ExportConfig, {"verify_sample": 3}, key="export")
    assert ExportConfig().formats == ["onnx", "openvino", "tflite"]
    assert ExportConfig().precisions == ["fp32", "int8"]


def test_cli_exports_int8_from_a_quantized_program(tmp_path, data):
    """`edgecnn export q.pt2 -p int8`: the quantized program is loaded with edgecnn.compress.quantize's
    loader (the package also exports a function named `quantize`, which once shadowed the module)."""
    from edgecnn.cli import main
    from edgecnn.compress.quantize import QuantizeConfig, quantize, save_quantized
    from edgecnn.models import ModelConfig, build_model

    torch.manual_seed(0)
    net = build_model(ModelConfig(source="bn_cnn", options={"width": 8}), data.num_classes, 1).eval()
    q = quantize(net, QuantizeConfig(calibration_samples=64, bias_correction=False), data).model
    program = save_quantized(tmp_path / "q.pt2", q, data.example_input(2))
    out = tmp_path / "out"
    rc = main(["export", str(program), "-p", "int8", "-f", "onnx", "-o", str(out), "--verify-samples", "16"])
    assert rc == 0
    assert (out / "model_int8.onnx").is_file() and (out / "model_int8.onnx.json").is_file()


def test_top1_agreement_counts_exact_ties_as_ties():
    """An int8 reference with two exactly tied top logits has no single top-1: the artifact agrees
    when it picks either tied class, and disagrees when it picks a third; strict argmax is kept."""
    import numpy as np

    from edgecnn.export.verify import compare

    ref = np.array([[1.0, 3.0, 3.0], [2.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 2.0]], np.float32)
    out = np.array([[1.0, 2.9, 3.1], [2.0, 1.0, 0.0], [0.1, 0.2, 0.3], [0.0, 2.0, 2.0]], np.float32)
    r = compare(out, ref)
    # row 0: tie 1/2 in ref, out picks 2 -> agrees; row 1: plain agreement; row 2: out picks 2,
    # outside ref's tie {0, 1} -> disagrees; row 3: out ties 1/2, ref's top-1 (2) among them -> agrees
    assert r["top1_agreement"] == 0.75 and r["top1_agreement_strict"] == 0.25
    assert r["reference_top1_ties"] == 2
    fp = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)   # no ties: plain argmax equality
    assert compare(fp[::-1].copy(), fp)["top1_agreement"] == 0.0 and compare(fp, fp)["top1_agreement"] == 1.0
