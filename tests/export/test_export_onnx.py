"""ONNX fp32: dynamic batch, checker, embedded contract, verification recorded, ORT agrees with torch."""
from __future__ import annotations

import json

import numpy as np
import onnx

from edgecnn.export import Artifact, ExportConfig, contract_meta, export_model
from edgecnn.runtimes import open_session


def test_onnx_fp32_roundtrip(tmp_path, float_model, data, test_images):
    x, _ = test_images
    art = export_model("onnx", float_model, data.example_input(1), tmp_path / "m.onnx",
                       ExportConfig(formats=["onnx"]), meta=contract_meta(data, "abc"), verify_inputs=x[:200])
    assert art.precision == "fp32" and art.path.exists() and art.sidecar.exists()
    assert art.verification["passed"] and art.verification["top1_agreement"] == 1.0
    assert art.verification["max_abs_diff"] < 1e-3
    proto = onnx.load(str(art.path))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    embedded = json.loads(meta["edgecnn_contract"])
    assert embedded["class_names"] == data.class_names and embedded["recipe_hash"] == "abc"
    assert art.contract["input"]["shape"][0] is None          # dynamic batch
    assert art.contract["exporter"]["opset"] == 18
    loaded = Artifact.load(art.path)
    assert loaded.contract == art.contract and loaded.verification["passed"]
    loaded.check_files()
    with open_session(loaded, threads=1) as s:
        assert s.info["runtime"] == "onnxruntime"
        y = s.run(x[:7])      # any batch size
    ref = float_model(__import__("torch").from_numpy(x[:7])).detach().numpy()
    np.testing.assert_allclose(y, ref, atol=1e-4)


def test_int8_relu6_clamp_folds_into_the_conv(tmp_path):
    """PTQ observes conv -> ReLU6 after the clamp (QuantizeConfig.clamped_outputs): the exported
    Clip(0, 6) then sits before a QuantizeLinear with range [0, <= 6], the 'onnxruntime' lowering
    drops it, and ORT runs both convs as QLinearConv, agreeing with the fake-quant graph."""
    import importlib

    import torch

    from edgecnn.export.lowering import ort_fused_ops

    Q = importlib.import_module("edgecnn.compress.quantize")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
            self.conv2 = torch.nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.conv2(torch.nn.functional.relu6(self.bn(self.conv1(x)))).mean((2, 3))

    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.conv1.weight.mul_(10.0)
    batches = [torch.randn(16, 3, 8, 8) for _ in range(2)]
    qm = Q._mark_eval(Q._ptq(Q.export_graph(model, batches[0]), Q.QuantizeConfig(observer="histogram", bias_correction=False), batches))
    x = torch.randn(8, 3, 8, 8)
    art = export_model("onnx", qm, x[:1], tmp_path / "q.onnx", ExportConfig(formats=["onnx"], verify_samples=8),
                       precision="int8", verify_inputs=x.numpy())
    assert art.verification["passed"], art.verification
    ops = [n.op_type for n in onnx.load(str(art.path)).graph.node]
    assert "Clip" not in ops and "Relu" not in ops, ops   # folded: the QuantizeLinear clamps to [0, <= 6]
    fused = ort_fused_ops(str(art.path))
    assert fused.get("QLinearConv", 0) == 2, fused
    with open_session(art.path, threads=1) as s:
        y = s.run(x.numpy())
    np.testing.assert_allclose(y, qm(x).detach().numpy(), atol=0.05)
