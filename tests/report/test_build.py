"""report.json from a realistic manifest, and from manifests missing whole sections."""
import json

import pytest

from edgecnn.recipe import ReportConfig
from edgecnn.report import REPORT_SCHEMA, build_report, load_report, write_reports


def test_schema_and_top_level(fake_report):
    r = fake_report
    assert r["schema"] == REPORT_SCHEMA and r["schema_version"] == 1
    assert r["recipe_hash"] == "3f1c2a9d" * 8 and r["recipe"]["name"] == "fake"
    assert {"python", "torch", "platform"} <= set(r["environment"])
    for key in ("run", "data", "stages", "artifacts", "reference", "targets", "pareto", "consistency",
                "per_class", "notes"):
        assert key in r


def test_stages_carry_accuracy_macs_params_time(fake_report):
    st = {s["name"]: s for s in fake_report["stages"]}
    assert list(st) == ["train", "prune", "quantize", "export", "verify"]
    assert st["train"]["accuracy"]["top1"] == 96.9 and st["train"]["macs"] == 2_466_000
    assert st["train"]["params"] == 102_730 and st["train"]["seconds"] == 41.2
    # compress stages report after-values under their own names
    assert st["prune"]["macs"] == 1_210_000 and st["prune"]["params"] == 51_200
    assert st["prune"]["accuracy"]["top1"] == 96.5
    # ... and each headline top-1 says which split it was measured on: prune evaluates on its eval_split
    assert st["prune"]["accuracy"]["split"] == "val"
    assert st["train"]["accuracy"]["split"] == "test" and st["quantize"]["accuracy"]["split"] == "test"
    assert st["export"]["accuracy"]["top1"] is None and st["export"]["accuracy"]["split"] is None
    assert st["prune"]["sensitivity"]["ratios"] == [0.1, 0.3, 0.5, 0.7]
    # artifacts and measurements live in their own sections, not repeated under the stage
    assert "artifacts" not in st["export"]["metrics"] and "measurements" not in st["verify"]["metrics"]


def test_artifacts_with_measurements_per_target(fake_report):
    arts = {a["name"]: a for a in fake_report["artifacts"]}
    assert len(arts) == 6
    a = arts["model_int8.onnx"]
    assert a["format"] == "onnx" and a["precision"] == "int8" and a["size_bytes"] == 118_300
    assert len(a["sha256"]) == 64 and a["verification"]["n"] == 200
    assert sorted(m["target"] for m in a["measurements"]) == ["local-cpu", "local-cpu-1t"]
    m = a["measurements"][0]
    assert m["accuracy"]["top1"] == 96.0 and m["agreement"]["top1_agreement"] == 100.0
    assert set(m["latency_ms"]) >= {"p50", "p90", "p99", "mean", "std"}
    assert m["throughput"]["images_per_s"] > 0 and m["memory"]["peak_rss_mb"] > 0
    assert m["load_seconds"] == 0.05
    # the PyTorch rows are the reference, not an artifact
    assert {r["artifact"] for r in fake_report["reference"]} == {"torch-fp32", "torch-int8"}


def test_pareto_front_marked_per_target(fake_report):
    # openvino is fastest at each precision; int8 is faster but less accurate than fp32: both on the front
    assert fake_report["pareto"]["local-cpu"] == ["model_int8_openvino.xml@local-cpu",
                                                  "model_fp32_openvino.xml@local-cpu"]
    rows = [m for a in fake_report["artifacts"] for m in a["measurements"]]
    assert sum(m["pareto"] for m in rows) == 4


def test_consistency_and_per_class_from_saved_logits(fake_report):
    groups = fake_report["consistency"]["groups"]
    assert set(groups) == {"fp32", "int8"}
    assert groups["fp32"]["flagged"] == []
    flagged = groups["int8"]["flagged"]
    assert flagged and all("model_int8_tflite.tflite" in f["a"] + f["b"] for f in flagged)
    assert all(f["n_differ"] == len(f["indices"]) == 4 for f in flagged)
    pc = fake_report["per_class"]["artifacts"]
    assert "model_fp32.onnx" in pc and len(pc["model_fp32.onnx"]["classes"]) == 10
    assert pc["model_fp32.onnx"]["top1"] == 96.5
    assert sum(map(sum, pc["model_fp32.onnx"]["confusion"])) == 200


def test_flat_and_nested_measurement_shapes_read_the_same(fake_run):
    run_dir, manifest = fake_run
    rows = manifest["stages"]["verify"]["metrics"]["measurements"]
    nested = [{"artifact": r["name"], "target": r["target"], "runtime": r["runtime"],
               "accuracy": {"top1": r["top1"], "top5": r["top5"]},
               "agreement": {"top1_agreement": r["agreement_top1"], "max_abs_diff": r["max_abs_diff"]},
               "latency_ms": r["latency_ms"], "throughput": r["throughput_ips"], "load_seconds": r["load_s"],
               "peak_rss_mb": r["peak_rss_mb"], "size_bytes": r["size_bytes"], "env": r["env"]} for r in rows]
    flat = build_report(manifest)
    manifest["stages"]["verify"]["metrics"]["measurements"] = nested
    nest = build_report(manifest)
    for a, b in zip(flat["artifacts"], nest["artifacts"]):
        for x, y in zip(a["measurements"], b["measurements"]):
            assert (x["accuracy"]["top1"], x["agreement"], x["latency_ms"], x["throughput"]["images_per_s"]) == \
                   (y["accuracy"]["top1"], {**y["agreement"], "mean_abs_diff": x["agreement"]["mean_abs_diff"]},
                    y["latency_ms"], y["throughput"]["images_per_s"])


@pytest.mark.parametrize("drop", [["export", "verify"], ["verify"], ["prune", "quantize"]])
def test_missing_stages_still_build_and_render(fake_run, drop, tmp_path):
    run_dir, manifest = fake_run
    for k in drop:
        del manifest["stages"][k]
    paths = write_reports(run_dir, manifest, ReportConfig())
    r = json.loads(paths["json"].read_text())
    assert r["schema"] == REPORT_SCHEMA
    assert paths["md"].read_text().startswith("# edgecnn report")
    assert "<html" in paths["html"].read_text()
    if "export" in drop:
        assert r["artifacts"] == [] and any("no export" in n for n in r["notes"])


def test_empty_manifest():
    r = build_report({})
    assert r["stages"] == [] and r["artifacts"] == [] and r["consistency"] is None


def test_without_saved_logits_the_report_says_so(fake_run):
    run_dir, manifest = fake_run
    for m in manifest["stages"]["verify"]["metrics"]["measurements"]:
        m.pop("logits")
    del manifest["stages"]["verify"]["metrics"]["labels"]
    r = build_report(manifest, run_dir)
    assert r["consistency"]["groups"] == {} and r["per_class"]["artifacts"] == {}
    assert any("'logits'" in n for n in r["notes"]) and any("per-class" in n for n in r["notes"])


def test_labels_reread_from_data_when_verify_saved_none(fake_run, monkeypatch):
    import numpy as np

    from edgecnn.report import classes
    run_dir, manifest = fake_run
    labels = np.load(run_dir / "verify" / "labels.npy")
    del manifest["stages"]["verify"]["metrics"]["labels"]
    monkeypatch.setattr(classes, "labels_from_data", lambda report: (labels, ""))
    r = build_report(manifest, run_dir)
    assert r["per_class"]["artifacts"]["model_fp32.onnx"]["top1"] == 96.5
    assert any("re-read from the recipe's data source" in n for n in r["notes"])
    monkeypatch.setattr(classes, "labels_from_data", lambda report: (None, "the data source changed"))
    r = build_report(manifest, run_dir)
    assert r["per_class"]["artifacts"] == {} and any("the data source changed" in n for n in r["notes"])


def test_load_report_reads_report_manifest_or_run_dir(fake_run, tmp_path):
    run_dir, manifest = fake_run
    assert load_report(run_dir / "manifest.json")["schema"] == REPORT_SCHEMA
    write_reports(run_dir, manifest, ReportConfig(formats=["json"]))
    assert load_report(run_dir)["run"]["name"] == "fake"
    future = tmp_path / "future.json"
    future.write_text(json.dumps({"schema": REPORT_SCHEMA, "schema_version": 99}))
    with pytest.raises(Exception, match="schema version 99"):
        load_report(future)
