"""Gates through the CLI: a doctored baseline fails naming artifact and bound, an honest one passes."""
import copy
import json
from xml.etree import ElementTree as ET

import pytest

from edgecnn.cli import main
from edgecnn.report import build_report
from edgecnn.report.gates import GateConfig, check_gates, failures


@pytest.fixture
def baseline(fake_run, tmp_path):
    """An honest baseline: the report of the same run."""
    run_dir, manifest = fake_run
    return build_report(manifest, run_dir)


def _doctor(report, artifact, target, top1=None, p50=None):
    r = copy.deepcopy(report)
    for a in r["artifacts"]:
        for m in a["measurements"]:
            if m["artifact"] == artifact and m["target"] == target:
                if top1 is not None:
                    m["accuracy"]["top1"] = top1
                if p50 is not None:
                    m["latency_ms"]["p50"] = p50
    return r


def _save(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def test_honest_baseline_passes(fake_run, baseline, tmp_path, capsys):
    run_dir, _ = fake_run
    junit = tmp_path / "gates.xml"
    code = main(["report", str(run_dir), "--compare", _save(tmp_path / "base.json", baseline),
                 "--max-accuracy-drop", "0.5", "--max-latency-regression", "10", "--max-size", "1",
                 "--junit", str(junit)])
    assert code == 0, capsys.readouterr().err
    assert "gates passed" in capsys.readouterr().err
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "0" and int(suite.get("tests")) > 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["gates"] and all(g["status"] == "passed" for g in report["gates"])
    assert "## Gates" in (run_dir / "report.md").read_text()


def test_doctored_baseline_fails_naming_artifact_and_bound(fake_run, baseline, tmp_path, capsys):
    run_dir, _ = fake_run
    better = _doctor(baseline, "model_int8.onnx", "local-cpu", top1=98.0)       # run is 96.0: a 2-point drop
    better = _doctor(better, "model_fp32_openvino.xml", "local-cpu-1t", p50=0.1)  # run is 0.26 ms: +160%
    junit = tmp_path / "gates.xml"
    code = main(["report", str(run_dir), "--compare", _save(tmp_path / "base.json", better),
                 "--max-accuracy-drop", "0.5", "--max-latency-regression", "10", "--junit", str(junit)])
    err = capsys.readouterr().err
    assert code == 1
    assert "FAIL accuracy_drop: model_int8.onnx @ local-cpu" in err and "98.00%" in err
    assert "FAIL latency_regression: model_fp32_openvino.xml @ local-cpu-1t" in err
    assert err.count("FAIL") == 2
    cases = ET.parse(junit).getroot().iter("testcase")
    failed = sorted((c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None)
    assert failed == [("edgecnn.gates.model_fp32_openvino.xml@local-cpu-1t[openvino]", "latency_regression"),
                      ("edgecnn.gates.model_int8.onnx@local-cpu[onnxruntime]", "accuracy_drop")]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "2" and int(suite.get("tests")) == 24 + 12  # 12 rows x 2 bounds; 6 rows on local-cpu x 2 budgets


def test_max_size_and_target_budgets(fake_report):
    res = check_gates(fake_report, None, GateConfig(max_size=0.2))
    bad = {(g["artifact"], g["bound"]) for g in failures(res)}
    assert bad == {("model_fp32.onnx", "size"), ("model_fp32_openvino.xml", "size"),
                   ("model_fp32_tflite.tflite", "size")}
    # local-cpu's budgets (latency 1 ms, size 1 MB) hold; tighten them and the rows on that target fail
    fake_report["targets"]["local-cpu"]["budgets"] = {"latency_ms": 0.2, "memory_mb": 4000}
    bad = {(g["artifact"], g["target"], g["bound"]) for g in failures(check_gates(fake_report))}
    assert bad == {("model_fp32.onnx", "local-cpu", "budget.latency_ms"),
                   ("model_fp32_tflite.tflite", "local-cpu", "budget.latency_ms")}
    assert not failures(check_gates(fake_report, cfg=GateConfig(budgets=False)))


def test_lost_artifact_and_failed_measurement_fail(fake_report):
    base = copy.deepcopy(fake_report)
    run = copy.deepcopy(fake_report)
    run["artifacts"] = run["artifacts"][1:]
    m = run["artifacts"][0]["measurements"][0]
    m.update(status="failed", error="runtime crashed")
    m["accuracy"]["top1"] = None
    res = failures(check_gates(run, base, GateConfig(max_accuracy_drop=1.0, budgets=False)))
    assert {(g["artifact"], g["bound"]) for g in res} == {
        ("model_fp32.onnx", "present"), (m["artifact"], "accuracy_drop")}
    assert any("runtime crashed" in g["message"] for g in res)


def test_drop_bound_without_baseline_is_a_usage_error(fake_run, capsys):
    run_dir, _ = fake_run
    assert main(["report", str(run_dir), "--max-accuracy-drop", "1"]) == 2
    assert "--compare" in capsys.readouterr().err


def test_report_without_gates_rerenders(fake_run, capsys):
    run_dir, _ = fake_run
    assert main(["report", "fake", "--runs", str(run_dir.parent), "--no-budgets"]) == 0
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()
    assert "gates" not in json.loads((run_dir / "report.json").read_text())
    assert main(["report", "fakee", "--runs", str(run_dir.parent)]) == 2
    assert "Did you mean 'fake'" in capsys.readouterr().err
