"""The export stage records per-artifact metrics keyed '{format}_{precision}' and sidecars on disk."""
import json
from pathlib import Path

import yaml

from edgecnn.report import build_report, export_artifacts, load_report

ROOT = Path(__file__).resolve().parents[2]


def test_keyed_export_metrics_and_sidecars(tmp_path):
    (tmp_path / "export").mkdir()
    side = {"format": "onnx", "precision": "int8", "file": "model_int8.onnx", "sha256": "ab" * 32,
            "input": {"shape": [None, 1, 28, 28]}, "verification": {"top1_agreement": 0.995, "max_abs_diff": 0.02,
                                                                     "samples": 200, "passed": True}}
    (tmp_path / "export" / "model_int8.onnx.json").write_text(json.dumps(side))
    entry = {"kind": "export", "state": {"artifacts": ["export/model_int8.onnx.json"]},
             "outputs": {"export/model_int8.onnx": {"path": "export/model_int8.onnx", "sha256": "ab" * 32}},
             "metrics": {"onnx_int8": {"file": "model_int8.onnx", "bytes": 24_000, "top1_agreement": 0.995,
                                       "max_abs_diff": 0.02, "samples": 200, "runtime": "onnxruntime"},
                         "skipped": []}}
    arts = export_artifacts(entry, tmp_path)
    assert arts[0]["path"] == "export/model_int8.onnx" and arts[0]["contract"]["input"]["shape"][1] == 1
    manifest = {"stages": {"export": entry, "verify": {"kind": "verify", "metrics": {"measurements": [
        {"name": "model_int8.onnx", "target": "local-cpu", "runtime": "onnxruntime", "top1": 97.0,
         "latency_ms": {"p50": 0.1}}]}}}}
    a, = build_report(manifest, tmp_path)["artifacts"]
    assert (a["name"], a["format"], a["precision"], a["size_bytes"]) == ("model_int8.onnx", "onnx", "int8", 24_000)
    assert a["verification"]["top1_agreement"] == 99.5 and a["verification"]["n"] == 200   # share -> percent
    assert a["sha256"] == "ab" * 32 and a["measurements"][0]["accuracy"]["top1"] == 97.0
    # without the run directory the manifest alone still gives name, size and sha256
    a, = build_report(manifest)["artifacts"]
    assert a["size_bytes"] == 24_000 and a["sha256"] == "ab" * 32


def test_committed_baseline_and_workflow():
    base = load_report(ROOT / "benchmarks" / "baselines" / "ci.json")
    assert base["artifacts"] and all(a["measurements"] for a in base["artifacts"])
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "edgecnn.yml").read_text())
    steps = wf["jobs"]["build-and-gate"]["steps"]
    text = json.dumps(steps)
    assert "GITHUB_STEP_SUMMARY" in text and "--compare" in text and "--junit" in text
    assert (ROOT / wf["env"]["RECIPE"]).is_file() and (ROOT / wf["env"]["BASELINE"]).is_file()
