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
