"""`edgecnn bench`, `predict` and `targets` through typer, on the tiny ONNX artifact."""
from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from edgecnn.commands.bench import register


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def test_targets_list(cli):
    r = cli("targets", "list")
    assert r.exit_code == 0, r.output
    for name in ("local-cpu", "local-cpu-1t", "cuda", "raspberry-pi-4", "jetson-orin-nano", "intel-nuc"):
        assert name in r.output


def test_targets_check(cli):
    r = cli("targets", "check", "local-cpu-1t")
    assert r.exit_code == 0 and "reachable" in r.output and "onnxruntime" in r.output
    r = cli("targets", "check", "cuda")
    assert r.exit_code == (0 if torch.cuda.is_available() else 1)


def test_bench_command(cli, tiny, tmp_path):
    data, model, art, x, y, ref = tiny
    out = tmp_path / "rows.json"
    r = cli("bench", art.path, "--target", "local-cpu-1t", "--runs", 20, "--warmup", 2, "--data", "digits",
            "--repeat", 2, "--json", out)
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and rows[0]["top1"] == round(100.0 * (ref.argmax(1) == y).mean(), 2)
    assert "spread" in r.output and "next: edgecnn predict" in r.output


def test_predict_command(cli, tiny, tmp_path):
    from PIL import Image

    data, model, art, x, y, ref = tiny
    img = tmp_path / "digit.png"
    Image.fromarray(data.splits["test"].images[0, 0].numpy()).save(img)
    r = cli("predict", art.path, img, "--top-k", 3, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    top = res[0]["top"]
    assert len(top) == 3 and top[0]["class"] == int(ref[0].argmax())
    assert top[0]["label"] == data.class_names[top[0]["class"]] and top[0]["score"] >= top[1]["score"]
