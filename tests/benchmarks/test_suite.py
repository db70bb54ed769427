"""The benchmark suite's bookkeeping: peaks, best-of choice, comparisons, goals, Markdown (no models run)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import run as bench_run  # noqa: E402
import suite  # noqa: E402
from suite import Row  # noqa: E402
from suite_report import markdown  # noqa: E402


def test_int8_peak_by_isa():
    zen4 = {"flags": ["avx512_vnni", "avx512f"], "vendor": "AuthenticAMD", "model": "AMD EPYC", "mhz": 2600.0}
    spr = {"flags": ["avx512_vnni", "amx_int8", "amx_tile"], "vendor": "GenuineIntel", "model": "Xeon", "mhz": 2000.0,
           "max_mhz": 3800.0}
    p = bench_run.int8_peak(zen4)
    assert p["int8_mac_per_cycle_per_core"] == 64 and p["peak_gmac_s_1core"] == pytest.approx(166.4)
    assert "no AMX" in p["note"]
    p = bench_run.int8_peak(spr)
    assert p["int8_mac_per_cycle_per_core"] == 1024 and p["mhz"] == 3800.0 and p["mhz_source"].startswith("lscpu")


def _row(key, who, group, top1, p50, p50_all=None, runtime="onnxruntime", precision="int8", **config):
    return Row(key, key, who, runtime, precision, group=group, top1=top1, agreement=100.0, p50_1t=p50,
               p50_all=p50_all or p50, config=dict(config))


def rows():
    return [_row("torch/fp32", "baseline", "baseline", 97.0, 40.0, runtime="torch", precision="fp32"),
            _row("ort/fp32", "baseline", "fp32", 97.0, 20.0, precision="fp32"),
            _row("ort/edgecnn-qdq", "edgecnn", "int8-ort", 96.8, 9.0),
            _row("ort/edgecnn-onnxruntime-integer", "edgecnn", "int8-ort", 96.9, 2.0),
            _row("ort/peer-QDQ-u8s8", "peer", "int8-ort", 96.9, 2.5),
            _row("ort/peer-QDQ-s8s8", "peer", "int8-ort", 95.0, 1.5),       # fastest but 1.9 pp worse: not best
            _row("ov/edgecnn-openvino", "edgecnn", "int8-ov", 96.9, 1.2, runtime="openvino"),
            _row("ov/peer-nncf-performance", "peer", "int8-ov", 97.0, 1.0, runtime="openvino"),
            _row("ov/fp32", "baseline", "fp32", 97.0, 4.0, runtime="openvino", precision="fp32"),
            _row("ov/pruned-edgecnn", "edgecnn", "prune-ov", 96.0, 1.6, runtime="openvino", precision="fp32",
                 macs_ratio=3.0),
            _row("ov/pruned-tp", "peer", "prune-ov", 90.0, 1.5, runtime="openvino", precision="fp32", macs_ratio=3.0)]


def test_best_of_keeps_accuracy_within_half_a_point():
    r = rows()
    assert suite.best_of(r, "peer", "int8-ort").key == "ort/peer-QDQ-u8s8"
    assert suite.best_of(r, "edgecnn", "int8-ort").key == "ort/edgecnn-onnxruntime-integer"
    assert suite.best_of(r, "peer", "nothing") is None


def test_summarize_compares_and_marks_peer_wins():
    r = rows()
    info = suite.summarize(r, {})
    comps = {c["group"]: c for c in info["comparisons"]}
    assert comps["int8-ort"]["peer_over_edgecnn_latency_1t"] == pytest.approx(1.25)
    assert comps["int8-ov"]["faster_at_1t"] == "peer" and comps["int8-ov"]["more_accurate"] == "peer"
    assert comps["prune-ov"]["more_accurate"] == "edgecnn"
    ps = {p["pruned"]: p for p in info["pruning_speedup"]}
    assert ps["ov/pruned-edgecnn"]["speedup_1t"] == pytest.approx(2.5)
    assert ps["ov/pruned-edgecnn"]["speedup_over_macs_ratio"] == pytest.approx(2.5 / 3, abs=1e-3)
    assert r[3].config["speedup_vs_eager_1t"] == 20.0 and r[3].config["best"]

    res = {"command": "x", "git": {"commit": "abc", "dirty_files": []}, "started": "now", "seconds": 1,
           "loadavg_start": [5.0, 5.0, 5.0], "loadavg_end": [1.0, 1.0, 1.0], "cpu": {"model": "cpu"},
           "versions": {}, "config": {"size": 32}, "int8_peak": bench_run.int8_peak({"flags": [], "mhz": 1000.0}),
           "models": {}, "latency_224": {"resnet18": {**info, "rows": [x.to_dict() for x in r], "macs": 1.8e9,
                                                       "input_shape": [3, 224, 224]}}}
    res["goals"] = bench_run.goals(res)
    res["mac_rate"] = bench_run.mac_rate(res, res["int8_peak"])
    goal = lambda start: next(g for g in res["goals"] if g["goal"].startswith(start))  # noqa: E731
    assert goal("edgecnn int8 ONNX")["met"] is True
    assert goal("edgecnn int8 IR")["met"] is False        # 1.2 ms vs 1.0 ms and less accurate
    assert goal("best int8 artifact")["met"] is True      # 40 ms / 1.2 ms
    assert res["mac_rate"]["row"] == "ov/peer-nncf-performance"  # fastest int8 row overall
    md = markdown(res)
    assert "**peer faster**" in md and "**peer more accurate**" in md
    assert "busy" in md                                           # load average 5 at the start
    assert "| resnet18 | edgecnn int8 IR within 1.05x of NNCF" in md


def test_latency_interleaves_and_records_failures():
    calls = []

    def opener(name, fail=False):
        def open_(threads):
            if fail:
                raise RuntimeError("no such kernel")
            return lambda x: calls.append(name) or x
        return open_

    rs = [Row("a", "a", "edgecnn", "onnxruntime", "int8", opener("a")),
          Row("b", "b", "peer", "onnxruntime", "int8", opener("b")),
          Row("c", "c", "peer", "onnxruntime", "int8", opener("c", fail=True))]
    logged = []
    med = suite.latency(rs, np.zeros((1, 1, 2, 2), np.float32), 1, runs=4, warmup=1, log=logged.append)
    assert set(med) == {"a", "b"} and rs[2].status == "failed" and "no such kernel" in rs[2].error
    timed = calls[2:]                       # after one warm-up call each
    assert timed == ["a", "b", "b", "a", "a", "b", "b", "a"]   # order rotates every round
