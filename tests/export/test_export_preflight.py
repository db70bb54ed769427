"""Pre-flight check_model and the thin CLI commands."""
from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from edgecnn.export import ExportConfig, check_model, contract_meta, export_model


@pytest.mark.slow   # three converters and three runtimes: ~25 s
def test_check_model_lists_what_each_format_cannot_take():
    from test_export_errors import NetWithErfinv

    report = check_model(NetWithErfinv(), (1, 8, 8))
    by = {c.format: c for c in report.checks}
    assert not report.ok and report.accepted() == ["openvino"]
    for fmt in ("onnx", "tflite"):
        assert by[fmt].stage == "convert" and by[fmt].locations == ["act (Erfinv)"]
        assert "erf" in by[fmt].operators[0]
    assert by["openvino"].max_abs_diff < 1e-4
    assert "FAILED" in report.summary() and json.dumps(report.to_dict())


@pytest.mark.slow
def test_check_model_passes_a_plain_cnn():
    from edgecnn.models import ModelConfig, build_model

    report = check_model(build_model(ModelConfig(source="bn_cnn"), 10, 1), (1, 28, 28))
    assert report.ok, report.summary()
    assert all(c.seconds < 60 for c in report.checks)


def test_cli_inspect_prints_the_contract(tmp_path, float_model, data):
    from edgecnn.commands.export import register

    art = export_model("onnx", float_model, data.example_input(1), tmp_path / "m.onnx", ExportConfig(),
                       meta=contract_meta(data, "r1"), verify_inputs=data.tensors("test", 50)[0].numpy())
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", str(art.path)])
    assert res.exit_code == 0, res.output
    assert "input" in res.output and "top-1 agreement 100.00%" in res.output and "next: edgecnn bench" in res.output
    res = runner.invoke(app, ["inspect", str(art.sidecar), "--json"])
    assert json.loads(res.output)["recipe_hash"] == "r1"
    art.path.write_bytes(art.path.read_bytes() + b"x")     # tampered file: the sha256 check says so
    res = runner.invoke(app, ["inspect", str(art.path)])
    assert res.exit_code != 0 and "sha256 differs" in str(res.exception)
