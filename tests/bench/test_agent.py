"""The agent's own runtime adapters (used on devices) give what edgecnn.runtimes gives locally."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgecnn.bench import agent

FORMATS = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert"}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_agent_adapter_agrees_with_edgecnn_runtimes(fmt, tiny, tiny_artifacts, tmp_path):
    from edgecnn.runtimes import open_session

    if fmt not in tiny_artifacts:
        pytest.skip(f"no {fmt} artifact could be exported here")
    art = tiny_artifacts[fmt]
    x, y = tiny[3][:64], tiny[4][:64]
    for f in [*art.files, art.sidecar]:
        shutil.copy2(f, tmp_path / f.name)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    job = {"artifact": art.path.name, "sidecar": art.sidecar.name, "runtime": FORMATS[fmt], "threads": 1,
           "inputs": "x.npy", "labels": "y.npy", "save_logits": "logits.npy",
           "config": {"runs": 5, "warmup": 1, "throughput_seconds": 0.1}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    result = agent.run_job(job, str(tmp_path))
    assert result["ok"] and result["measure"]["n_images"] == 64
    with open_session(art, threads=1) as session:
        local = session.run(x)
    remote = np.load(tmp_path / "logits.npy")
    assert np.abs(remote - local).max() < 1e-4
    assert result["measure"]["accuracy"] == agent.topk_accuracy(local, y)


def test_agent_main_reports_failures_as_json(tmp_path, capsys):
    (tmp_path / "job.json").write_text(json.dumps({"artifact": "nope.onnx", "runtime": "onnxruntime",
                                                   "inputs": "x.npy"}))
    rc = agent.main(["measure", "--job", str(tmp_path / "job.json")])
    out = json.loads(capsys.readouterr().out)
    assert rc == agent.EXIT_FAILED and not out["ok"] and "nope.onnx" in out["error"]
    (tmp_path / "job.json").write_text(json.dumps({"artifact": "m", "runtime": "tensorrt", "inputs": "x.npy"}))
    rc = agent.main(["measure", "--job", str(tmp_path / "job.json")])
    out = json.loads(capsys.readouterr().out)
    assert rc == agent.EXIT_NO_RUNTIME and out["kind"] == "runtime_missing"


def test_quantized_io_helpers():
    q = (0.5, 3)
    x = np.array([-100.0, 0.0, 1.0, 100.0], np.float32)
    xi = agent._quantize(x, np.int8, q)
    assert xi.tolist() == [-128, 3, 5, 127]
    assert agent._dequantize(xi, q).tolist() == [-65.5, 0.0, 1.0, 62.0]
    contract = {"input": {"quantization": {"scale": 0.5, "zero_point": 3, "dtype": "int8"}}, "output": {}}
    assert agent._sidecar_quant(contract, "input") == q and agent._sidecar_quant(contract, "output") is None


def test_fixed_batch_model_reports_batch_1_throughput(tiny, tiny_artifacts):
    from edgecnn.bench.measure import MeasureConfig
    from edgecnn.bench.runner import measure_artifact

    if "tflite" not in tiny_artifacts:
        pytest.skip("no tflite artifact could be exported here")
    x, y = tiny[3][:40], tiny[4][:40]
    row = measure_artifact(tiny_artifacts["tflite"], "local-cpu-1t", (x, y), None,
                           MeasureConfig(runs=10, warmup=1, throughput_seconds=0.1))
    assert row.ok and row.runtime == "litert" and row.throughput_batch == 1 and row.n_images == 40
