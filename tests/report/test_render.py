"""report.md and report.html render, and the HTML stands alone."""
import re

from edgecnn.recipe import ReportConfig
from edgecnn.report import write_reports
from edgecnn.report.html import render_html
from edgecnn.report.markdown import render_markdown


def test_markdown_tables_and_size(fake_report):
    md = render_markdown(fake_report)
    assert "## Stages" in md and "## Artifacts" in md and "## Measurements" in md
    assert "| model_int8_openvino.xml | local-cpu | openvino | 96.00 |" in md
    assert "★" in md and "## Cross-runtime consistency" in md
    assert "| prune | prune | 96.50 | val |" in md and "| quantize | quantize | 96.00 | test |" in md
    assert "model_int8_tflite.tflite" in md.split("## Cross-runtime consistency")[1]
    assert len(md.encode()) < 64 * 1024   # a CI job summary, not a dump
    assert "data:image" not in md


def test_html_is_self_contained_with_embedded_plots(fake_run):
    run_dir, manifest = fake_run
    page = write_reports(run_dir, manifest, ReportConfig())["html"].read_text()
    srcs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(srcs) >= 6 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"https?://", page), "no external URL"
    assert "<script" not in page and "<link" not in page
    for title in ("Accuracy against latency", "Size per artifact", "Pruning sensitivity",
                  "Per-class precision and recall", "Cross-runtime consistency"):
        assert title in page


def test_html_escapes_names(fake_report):
    fake_report["artifacts"][0]["name"] = "<b>evil</b>"
    page = render_html(fake_report)
    assert "<b>evil</b>" not in page and "&lt;b&gt;evil&lt;/b&gt;" in page


def test_sensitivity_png_embedded_when_no_data(fake_run, tmp_path):
    import shutil

    from edgecnn.report import build_report
    run_dir, manifest = fake_run
    (run_dir / "prune" / "prune.json").write_text("{}")
    png = run_dir / "prune" / "sensitivity.png"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(1, 1))
    fig.savefig(png)
    plt.close(fig)
    manifest["stages"]["prune"]["outputs"]["sensitivity_plot"] = {"path": "prune/sensitivity.png", "sha256": "x"}
    page = render_html(build_report(manifest, run_dir), run_dir)
    assert "Pruning sensitivity" in page
    shutil.rmtree(run_dir / "prune")


def test_an_fp32_artifact_computed_in_bf16_says_so(fake_report):
    from edgecnn.report.rows import normalize_measurement, runtime_label

    flat = {"name": "model_fp32.xml", "target": "local-cpu", "runtime": "openvino", "format": "openvino",
            "precision": "fp32", "env": {"session": {"options": {"inference_precision": "bf16"}}}}
    row = normalize_measurement(flat)
    assert row["compute_precision"] == "bf16" and runtime_label(row) == "openvino (bf16 compute)"
    assert runtime_label({**row, "compute_precision": "f32"}) == "openvino"
    assert runtime_label({**row, "precision": "int8"}) == "openvino"      # int8 files say what they hold
    assert normalize_measurement({**flat, "env": {}})["compute_precision"] is None

    marked = 0
    for a in fake_report["artifacts"]:
        for m in a["measurements"]:
            if m["runtime"] == "openvino":
                m["compute_precision"] = "bf16"
                marked += m["precision"] == "fp32"
    assert marked
    md = render_markdown(fake_report)
    assert md.count("openvino (bf16 compute)") == marked
    assert render_html(fake_report).count("openvino (bf16 compute)") == marked
