"""Artifact x target dispatch and the verify stage, on a real fp32 ONNX artifact."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edgecnn.bench.measure import MeasureConfig
from edgecnn.bench.runner import BenchConfig, measure_artifact, measure_module, pick_runtime, verify_stage
from edgecnn.bench.targets import RuntimeMissing, Target, TargetUnavailable, load_target
from edgecnn.errors import RecipeError

FAST = dict(runs=30, warmup=3, throughput_seconds=0.2)


def test_local_measurement_matches_torch(tiny):
    data, model, art, x, y, ref = tiny
    row = measure_artifact(art, "local-cpu-1t", data, ref, MeasureConfig(**FAST))
    expected = (ref.argmax(1) == y).mean() * 100
    assert row.ok and row.runtime == "onnxruntime" and row.threads == 1 and not row.remote
    assert row.top1 == pytest.approx(expected, abs=0.01) and row.n_images == len(y)
    assert row.agreement_top1 == 100.0 and row.max_abs_diff < 1e-4
    assert row.latency_ms["runs"] == 30 and 0 < row.latency_ms["p50"] <= row.latency_ms["p99"]
    assert row.throughput_batch == 32 and row.throughput_ips > 0
    assert row.size_bytes == art.size_bytes and row.load_s > 0 and row.peak_rss_mb > 0
    assert row.env["session"]["runtime"] == "onnxruntime" and row.env["runtimes"]["onnxruntime"]


def test_artifact_by_sidecar_path_and_xy_pair(tiny):
    data, model, art, x, y, ref = tiny
    row = measure_artifact(str(art.sidecar), "local-cpu-1t", (x[:50], y[:50]), None, MeasureConfig(**FAST))
    assert row.n_images == 50 and row.agreement_top1 is None and row.top1 is not None


def test_reference_row_is_torch_eager(tiny):
    data, model, art, x, y, ref = tiny
    row, logits = measure_module(model, "local-cpu-1t", data, ref, MeasureConfig(**FAST))
    assert row.runtime == "torch" and row.format == "torch" and row.name == "torch-fp32"
    assert row.agreement_top1 == 100.0 and np.allclose(logits, ref, atol=1e-5)
    assert torch.get_num_threads() == min(2, os.cpu_count() or 1)   # the thread setting is given back


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU pinning needs Linux")
def test_pinning_applies_and_is_undone(tiny):
    data, model, art, x, y, ref = tiny
    before = os.sched_getaffinity(0)
    t = Target(name="pinned", threads=1, cpus=[sorted(before)[0]])
    row = measure_artifact(art, t, (x[:20], y[:20]), None, MeasureConfig(**FAST))
    assert row.env["pinned_cpus"] == [sorted(before)[0]]
    assert os.sched_getaffinity(0) == before


def test_runtime_choice_follows_the_target():
    assert pick_runtime("onnx", load_target("local-cpu")) == "onnxruntime"
    assert pick_runtime("onnx", Target(name="ov", runtimes=["openvino"])) == "openvino"
    with pytest.raises(RuntimeMissing) as e:
        pick_runtime("tflite", load_target("cuda"))
    assert e.value.status == "skipped" and "litert" in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the no-GPU path does not apply")
def test_cuda_target_without_gpu_raises_skippable(tiny):
    data, model, art, x, y, ref = tiny
    with pytest.raises(TargetUnavailable) as e:
        measure_artifact(art, "cuda", (x[:8], y[:8]), None, MeasureConfig(**FAST))
    assert e.value.status == "skipped" and "no CUDA GPU" in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_reference_row(tiny):
    data, model, art, x, y, ref = tiny
    row, logits = measure_module(model, "cuda", data, ref, MeasureConfig(**FAST))
    assert row.ok and row.env["session"]["device"].startswith("cuda") and row.agreement_top1 >= 99.0
    model.cpu()


def test_bench_config_validation():
    with pytest.raises(RecipeError) as e:
        BenchConfig(targets=[])
    assert e.value.key == "targets"
    assert BenchConfig(runs=7).measure_config() == MeasureConfig(runs=7)


def test_verify_stage_records_failures_and_goes_on(tiny, tmp_path, closed_port):
    data, model, art, x, y, ref = tiny
    down = tmp_path / "down.yaml"   # an SSH device nobody answers for
    down.write_text(f"kind: ssh\nruntimes: [onnxruntime]\nssh: {{host: 127.0.0.1, port: {closed_port}, "
                    f"connect_timeout_s: 3, known_hosts: {tmp_path / 'kh'}}}\n")
    run_dir = tmp_path / "run"
    ctx = SimpleNamespace(data=data, run_dir=run_dir, stage_dir=run_dir / "verify", artifacts=lambda: [art, art],
                          model=model, quantized=lambda: None)
    ctx.stage_dir.mkdir(parents=True)
    # A typo in a target name fails when the recipe loads, before anything runs.
    with pytest.raises(RecipeError, match=r"targets\[3\].*Did you mean 'local-cpu"):
        BenchConfig(targets=["local-cpu-1t", str(down), "cuda", "local-cpu-typo"], **FAST)
    cfg = BenchConfig(targets=["local-cpu-1t", str(down), "cuda"], **FAST)
    result = verify_stage(ctx, cfg)
    rows = result.metrics["measurements"]
    by = {}
    for r in rows:
        by.setdefault(r["target"], []).append(r)
    local = by["local-cpu-1t"]
    assert [r["runtime"] for r in local] == ["torch", "onnxruntime", "onnxruntime"]
    assert all(r["status"] == "ok" for r in local)
    assert local[0]["top1"] == local[1]["top1"] and local[1]["agreement_top1"] == 100.0
    assert (run_dir / local[1]["logits"]).is_file() and np.load(run_dir / local[1]["logits"]).shape == ref.shape
    # unreachable: one failed row per artifact, each with the reason and the fix; no exception out of the stage
    assert [r["status"] for r in by["down"]] == ["failed", "failed"]
    assert f"cannot reach 127.0.0.1:{closed_port}" in by["down"][0]["error"]
    assert result.metrics["targets"]["down"]["status"] == "failed"
    expected_cuda = "ok" if torch.cuda.is_available() else "skipped"
    assert {r["status"] for r in by["cuda"]} == {expected_cuda}
    assert result.metrics["test"]["top1"] == local[0]["top1"]
    saved = json.loads(Path(result.files["measurements"]).read_text())
    assert len(saved) == len(rows) and result.metrics["counts"]["ok"] == 3
