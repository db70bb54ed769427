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


def test_pruning_goal_names_openvino_default_precision():
    """An 'fp32' OpenVINO row that ran bf16 (the CPU default on CPUs with bf16 units) says so in the goal:
    its pruned/unpruned speedup is not the f32 one (benchmarks/results/prune_profile.md)."""
    r = rows()
    for x in r:
        if x.key in ("ov/fp32", "ov/pruned-edgecnn"):
            x.config["kernels"] = {"Convolution:bf16": 20, "Pooling:bf16": 1}
    info = suite.summarize(r, {})
    res = {"latency_224": {"resnet18": {**info, "rows": [x.to_dict() for x in r]}}}
    g = next(g for g in bench_run.goals(res) if g["edgecnn"] == "ov/pruned-edgecnn")
    assert g["executed_precision"] == "bf16" and "bf16 (CPU default precision)" in g["figure"]
    assert bench_run.executed_conv_precision({"config": {"kernels": {"Convolution:f32": 3}}}) == "f32"
    assert bench_run.executed_conv_precision({"config": {}}) is None
    r[-2].config["kernels"] = {"Convolution:f32": 20}      # ran f32: nothing added
    res = {"latency_224": {"resnet18": {**suite.summarize(r, {}), "rows": [x.to_dict() for x in r]}}}
    g = next(g for g in bench_run.goals(res) if g["edgecnn"] == "ov/pruned-edgecnn")
    assert "executed_precision" not in g


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


def test_latency_records_spread():
    rs = [Row("a", "a", "edgecnn", "onnxruntime", "int8", lambda threads: (lambda x: x))]
    spread = {}
    med = suite.latency(rs, np.zeros((1, 1, 2, 2), np.float32), 1, runs=7, warmup=1, log=print, spread=spread)
    assert spread["a"]["runs"] == 7
    assert spread["a"]["p10"] <= med["a"] <= spread["a"]["p90"]


def _fixed(logits_per_image, delay_s=0.0):
    """An opener whose session returns the given logits row for every image and sleeps `delay_s`."""
    import time

    def open_(threads):
        def run(x):
            if delay_s:
                time.sleep(delay_s)
            return np.tile(np.asarray(logits_per_image, np.float32), (len(x), 1))
        return run
    return open_


def test_ort_screen_keeps_fastest_accurate_and_records_all():
    y = np.zeros(20, np.int64)
    ref = np.tile(np.array([[1.0, 0.0]], np.float32), (20, 1))
    right, wrong = [1.0, 0.0], [0.0, 1.0]
    rs = [Row("ort/peer-slow", "slow", "peer", "onnxruntime", "int8", _fixed(right, 0.004), group="int8-ort"),
          Row("ort/peer-fast", "fast", "peer", "onnxruntime", "int8", _fixed(right, 0.0), group="int8-ort"),
          Row("ort/peer-fast-wrong", "wrong", "peer", "onnxruntime", "int8", _fixed(wrong, 0.0), group="int8-ort"),
          Row("ort/edgecnn", "e", "edgecnn", "onnxruntime", "int8", _fixed(right), group="int8-ort")]
    cfg = suite.SuiteConfig(ort_screen_images=10, ort_screen_runs=3, ort_keep=1)
    out = suite.screen_ort(rs, np.zeros((20, 1, 2, 2), np.float32), y, ref, cfg, log=print)
    assert out["kept"] == ["ort/peer-fast"]           # 100% and fastest; the wrong one is 0%, the slow one slower
    st = {r.key: r.status for r in rs}
    assert st == {"ort/peer-slow": "screened", "ort/peer-fast": "ok", "ort/peer-fast-wrong": "screened",
                  "ort/edgecnn": "ok"}
    assert rs[2].screen["top1"] == 0.0 and rs[0].screen["p50_1t"] > rs[1].screen["p50_1t"]
    assert rs[1].top1 is None and not rs[3].screen     # full accuracy comes later; edgecnn rows are not screened
    res = {"rows": [r.to_dict() for r in rs], "ort_screen": out}
    assert any("screened out" in ln for ln in suite_report_table(res))


def suite_report_table(r):
    from suite_report import table
    return table(r)


def test_accuracy_reuses_reference_for_eager_row():
    calls = []
    rs = [Row("torch/fp32", "t", "baseline", "torch", "fp32", lambda threads: calls.append(1)),
          Row("ort/fp32", "o", "baseline", "onnxruntime", "fp32", _fixed([0.0, 1.0]))]
    ref = np.tile(np.array([[1.0, 0.0]], np.float32), (4, 1))
    suite.accuracy(rs, np.zeros((4, 1, 2, 2), np.float32), np.zeros(4, np.int64), ref, 1, print)
    assert not calls and rs[0].top1 == 100.0 and rs[1].top1 == 0.0 and rs[1].agreement == 0.0


def test_adapt_224_fine_tunes_a_copy_and_reports_cost():
    import torch

    from edgecnn.data import DataConfig, load_data

    data = load_data(DataConfig(source="synthetic", image_size=16, channels=3, calibration_size=8), 0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, data.num_classes)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = suite.SuiteConfig(adapt_bn_images=32, adapt_steps=3)
    adapted, info = suite.adapt_224(model, data, cfg, print, "tiny", measure=True)
    assert not torch.equal(adapted[0].weight, model[0].weight)                 # fine-tuned
    assert not torch.equal(adapted[1].running_mean, model[1].running_mean)     # statistics re-estimated
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())   # the original untouched
    assert info["steps"] == 3 and info["step_seconds_median"] is not None
    assert info["epoch_seconds_estimate"] is not None and info["steps_per_epoch"] == data.num_batches("train", 32)
    assert 0 <= info["val_top1_after"] <= 100 and not adapted.training

    # Dropout draws from torch's global RNG; the adapted weights must not depend on its state.
    drop = torch.nn.Sequential(*model[:5], torch.nn.Dropout(0.5), model[5]).eval()
    torch.manual_seed(1)
    a, _ = suite.adapt_224(drop, data, cfg, print, "tiny")
    torch.rand(7)
    torch.manual_seed(2)
    b, _ = suite.adapt_224(drop, data, cfg, print, "tiny")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())

    cfg0 = suite.SuiteConfig(adapt_bn_images=32, adapt_steps=0)                # statistics only
    adapted0, info0 = suite.adapt_224(model, data, cfg0, print, "tiny")
    assert torch.equal(adapted0[0].weight, model[0].weight) and info0["epoch_seconds_estimate"] is None


def test_paired_accuracy_counts_discordant_images_and_tests_them():
    e = np.array([True] * 90 + [False] * 10)
    p = e.copy()
    p[:6] = False                                       # 6 images only edgecnn gets right, none only the peer
    a = suite.paired_accuracy(e, p)
    assert (a["edgecnn_only"], a["peer_only"], a["diff_pp"]) == (6, 0, 6.0)
    assert a["p_value"] == pytest.approx(2 / 64, abs=1e-4) and a["significant"]
    assert a["diff_ci95_pp"][0] > 0
    p[90:94] = True                                     # and 4 only the peer: 6 vs 4 is a coin toss
    a = suite.paired_accuracy(e, p)
    assert (a["edgecnn_only"], a["peer_only"]) == (6, 4) and not a["significant"]
    assert a["diff_ci95_pp"][0] < 0 < a["diff_ci95_pp"][1]
    assert suite.paired_accuracy(e, e)["p_value"] == 1.0


def test_paired_latency_ratio_and_interval():
    e = [1e-3 * (1 + 0.01 * (i % 5)) for i in range(50)]
    lat = suite.paired_latency(e, [1.2 * t for t in e])
    assert lat["ratio_median"] == pytest.approx(1.2) and lat["ci95"] == pytest.approx([1.2, 1.2])
    assert lat["peer_slower_share"] == 1.0 and lat["rounds"] == 50
    noisy = suite.paired_latency(e, [t * (0.9 if i % 2 else 1.1) for i, t in enumerate(e)])
    assert noisy["ci95"][0] < 1.0 < noisy["ci95"][1]


def test_goal_within_noise_only_when_neither_paired_figure_says_worse():
    """A goal missed on the point figures is 'within noise' when the latency interval reaches the goal and the
    accuracy test does not find edgecnn worse; a significant accuracy loss or a clearly slower run is not."""
    def result(e_times, p_times, e_correct, p_correct):
        r = [x for x in rows() if x.key not in ("ort/edgecnn-qdq", "ort/peer-QDQ-s8s8")]
        e, p = r[2], r[3]                         # the only int8-ort row of each side
        e.p50_1t, p.p50_1t = float(np.median(e_times)), float(np.median(p_times))
        e.samples["1t"], p.samples["1t"] = e_times, p_times
        e.correct, p.correct = np.array(e_correct), np.array(p_correct)
        e.top1, p.top1 = 100 * e.correct.mean(), 100 * p.correct.mean()
        info = suite.summarize(r, {})
        res = {"latency_224": {"resnet18": {**info, "rows": [x.to_dict() for x in r]}}}
        return next(g for g in bench_run.goals(res) if g["goal"].startswith("edgecnn int8 ONNX"))

    e_t = [1.0 + 0.05 * (i % 7) for i in range(60)]
    noisy = [t * (0.96 if i % 2 else 1.03) for i, t in enumerate(e_t)]      # peer 0.5% faster, swings 7%
    right = [True] * 70 + [False] * 30
    two_fewer = right[:]
    two_fewer[0] = two_fewer[1] = False
    g = result(e_t, noisy, two_fewer, right)
    assert g["met"] is False and g["within_noise"] is True and "McNemar p" in g["noise"]
    g = result(e_t, [0.8 * t for t in e_t], right, right)                  # peer clearly faster
    assert g["met"] is False and g["within_noise"] is False
    much_worse = [False] * 12 + right[12:]
    g = result(e_t, [1.1 * t for t in e_t], much_worse, right)             # faster but 12 images worse, p < 0.05
    assert g["met"] is False and g["within_noise"] is False
    g = result(e_t, [1.1 * t for t in e_t], right, right)
    assert g["met"] is True
    md = markdown({"command": "x", "git": {"commit": "abc", "dirty_files": []}, "started": "now", "cpu": {},
                   "goals": [{**g, "met": False, "within_noise": True}]})
    assert "**no**, within this run's noise" in md and "Paired figures" in md
    md = markdown({"command": "x", "git": {"commit": "abc", "dirty_files": []}, "started": "now",
                   "cpu": {"flags": ["avx2"], "ort_u8s8_saturates": True}})
    assert "flags: avx2; ONNX Runtime u8s8 kernels saturate: True" in md


def test_write_results_records_the_end_of_the_run_and_writes_json_and_markdown(tmp_path):
    import json
    import time

    res = {"command": "x"}
    t0 = time.perf_counter() - 2.0
    bench_run.write_results(res, tmp_path / "r.json", lambda r: f"took {r['seconds']:.0f} s\n", t0)
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["seconds"] >= 2.0 and "loadavg_end" in written
    assert (tmp_path / "r.md").read_text() == f"took {written['seconds']:.0f} s\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md"]   # no temp files left


def test_the_report_names_the_observer_ptq_chose_and_the_val_figures_it_chose_on():
    from suite_report import observer_sentence

    search = {"chosen": "minmax", "val_images": 500,
              "candidates": [{"observer": "histogram", "val_agreement": 90.2}, {"observer": "minmax", "val_agreement": 91.0}]}
    s = observer_sentence({"observer": "minmax", "observer_search": search},
                          {"observer": "histogram", "observer_search": None})
    assert "observer minmax (auto; val agreement with float on 500 images: histogram 90.2%, minmax 91.0%)" in s
    assert s.endswith("pruned model's PTQ observer histogram.")
    assert observer_sentence({"float_test": {}}, None) == ""   # results written before the suite recorded it
    both = {"chosen": "minmax", "bias_correction": False, "val_images": 500,
            "candidates": [{"observer": "minmax", "bias_correction": True, "val_agreement": 90.2},
                           {"observer": "minmax", "bias_correction": False, "val_agreement": 91.0}]}
    s = observer_sentence({"observer": "minmax", "observer_search": both}, None)
    assert "observer minmax, bias correction off (auto; val agreement with float on 500 images: " \
           "minmax bc on 90.2%, minmax bc off 91.0%)" in s


def test_the_seeds_table_names_what_the_search_kept():
    from quantize_seeds import choice_label

    assert choice_label({"chosen": "histogram"}) == "histogram"      # results from before the correction was searched
    assert choice_label({"chosen": "minmax", "bias_correction": False}) == "minmax, bc off"


def test_a_peer_file_whose_weights_are_not_the_asked_type_is_flagged(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from suite_report import table

    inits = [numpy_helper.from_array(np.zeros((4, 4, 3, 3), np.int8), "w_conv"),
             numpy_helper.from_array(np.zeros((4, 10), np.uint8), "w_gemm"),
             numpy_helper.from_array(np.zeros(4, np.uint8), "w_zero_point")]   # 1-D: not a weight
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
    onnx.save(helper.make_model(graph), tmp_path / "peer.onnx")
    stored = suite.stored_weight_types(tmp_path / "peer.onnx")
    assert stored == {"int8": 1, "uint8": 1}

    row = {"method": "ORT quantize_static QOperator u8u8", "runtime": "onnxruntime", "precision": "int8",
           "top1": 90.0, "agreement": 99.0, "p50_1t": 1.0, "p50_all": 1.0, "status": "ok", "error": None,
           "size_bytes": 1000, "config": {"weights": "u8", "weights_stored": stored}}
    assert "**weights asked u8, stored int8 1, uint8 1**" in "\n".join(table({"rows": [row]}))
    row["config"]["weights_stored"] = {"uint8": 2}
    assert "weights asked" not in "\n".join(table({"rows": [row]}))
