"""Latency tables: structure and caching, the greedy plan, 'no latency bought', config errors.

Every table here comes from a deterministic fake timer (a function of the layer and its widths):
no test times anything, so none depends on the machine's load.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from edgecnn.compress import PruneConfig, prune
from edgecnn.compress import latency_table as lt
from edgecnn.compress.prune import _resolve_ignored, channel_counts
from edgecnn.errors import RecipeError


class Toy(nn.Module):
    """stem 3->32, depthwise 32, pointwise 32->48, classifier: two prunable groups (32 and 48)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(32, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = self.pw(self.dw(self.stem(x)))
        return self.fc(x.mean((2, 3)))


X = torch.randn(1, 3, 16, 16)


def macs_timer(spec: lt.LayerSpec, cin: int, cout: int) -> float:
    """Latency proportional to MACs: what a compute-bound kernel would give."""
    return spec.macs(cin, cout) * 1e-6 + 0.001


def flat_timer(spec: lt.LayerSpec, cin: int, cout: int) -> float:
    return 0.5   # every width costs the same: pruning buys nothing


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, spec, cin, cout):
        self.calls.append((spec.name, cin, cout))
        return self.fn(spec, cin, cout)


def _toy_layers(model=None):
    model = model or Toy().eval()
    specs = lt.model_layers(model, X)
    groups = lt.channel_groups(model, X, _resolve_ignored(model, []))
    lt._mark_prunable(specs, groups)
    return model, specs, groups


def test_layers_and_groups_follow_the_dependency_graph():
    _, specs, groups = _toy_layers()
    assert list(specs) == ["stem.0", "dw.0", "pw.0", "fc"]
    assert specs["dw.0"].depthwise and not specs["pw.0"].depthwise
    assert specs["stem.0"].in_hw == (16, 16) and specs["fc"].kind == "linear"
    # The depthwise conv moves with the stem's output channels; the classifier's input with pw's.
    stem_group = next(g for g in groups.values() if "stem.0" in g["out"])
    assert stem_group["width"] == 32 and "dw.0" in stem_group["out"] + stem_group["in"] and "pw.0" in stem_group["in"]
    pw_group = next(g for g in groups.values() if "pw.0" in g["out"])
    assert pw_group["width"] == 48 and pw_group["in"] == ["fc"]
    assert not specs["stem.0"].in_prunable and specs["fc"].in_prunable and not specs["fc"].out_prunable


def test_table_structure_and_cache(tmp_path):
    _, specs, _ = _toy_layers()
    timer = Counting(macs_timer)
    table = lt.build_table(specs, "onnxruntime", 1, cache_dir=tmp_path, timer=timer, cpu="Test CPU 9000", version="1.0")
    # Grid: full widths always present; the stem's fixed 3 input channels are one row; the depthwise
    # layer has one axis (cin == cout); the classifier only varies its input.
    stem = table.entries[specs["stem.0"].key()]
    assert {k.split(",")[0] for k in stem["grid"]} == {"3"} and "3,32" in stem["grid"]
    assert all(a == b for a, b in (k.split(",") for k in table.entries[specs["dw.0"].key()]["grid"]))
    assert {k.split(",")[1] for k in table.entries[specs["fc"].key()]["grid"]} == {"10"}
    assert sorted(int(w) for w in stem["scan"]) == [8, 16, 24, 32]   # the output scan, steps of 8
    assert table.measured == len(timer.calls) > 0
    # The cache is one JSON per runtime/version/CPU/threads, holding every measured point.
    path = tmp_path / table.cache_name()
    assert path.exists() and "onnxruntime" in path.name and "1t" in path.name and "test-cpu" in path.name
    assert json.loads(path.read_text())["entries"] == table.entries
    assert "/" not in lt.LatencyTable("openvino", 1, "x", "2026.4.1-releases/2026/4").cache_name()
    # Same key: nothing is timed again, and the lookups agree.
    again = Counting(macs_timer)
    cached = lt.build_table(specs, "onnxruntime", 1, cache_dir=tmp_path, timer=again, cpu="Test CPU 9000", version="1.0")
    assert again.calls == [] and cached.measured == 0
    assert cached.lookup(specs["pw.0"], 16, 24) == table.lookup(specs["pw.0"], 16, 24)
    # Another thread count is another table.
    other = Counting(macs_timer)
    lt.build_table(specs, "onnxruntime", 2, cache_dir=tmp_path, timer=other, cpu="Test CPU 9000", version="1.0")
    assert len(other.calls) == len(timer.calls)
    assert len(list(tmp_path.glob("latency_*.json"))) == 2


def test_lookup_interpolates_between_grid_points():
    _, specs, _ = _toy_layers()
    table = lt.build_table(specs, "onnxruntime", 1, timer=macs_timer, cpu="c", version="v")
    pw = specs["pw.0"]
    # Exact on grid points, linear in between (the fake is bilinear in cin*cout, so the check is tight).
    assert table.lookup(pw, 32, 48) == pytest.approx(macs_timer(pw, 32, 48), abs=1e-5)
    mid = table.lookup(pw, 32, 44)
    assert table.lookup(pw, 32, 40) < mid < table.lookup(pw, 32, 48)


def test_choose_round_to_finds_latency_steps():
    stepped = {w: float((w + 15) // 16) for w in range(8, 129, 8)}   # jumps every 16 channels
    assert lt.choose_round_to(stepped, 128) == 16
    coarse = {w: float((w + 31) // 32) for w in range(8, 129, 8)}
    assert lt.choose_round_to(coarse, 128) == 32
    smooth = {w: float(w) for w in range(8, 129, 8)}
    assert lt.choose_round_to(smooth, 128) == 8


def _toy_table(timer):
    model, specs, groups = _toy_layers()
    return model, specs, groups, lt.build_table(specs, "onnxruntime", 1, timer=timer, cpu="c", version="v")


def test_plan_reaches_the_target_deterministically():
    _, specs, groups, table = _toy_table(macs_timer)
    plans = [lt.plan_widths(table, specs, groups, target=("macs", 2.0)) for _ in range(2)]
    assert plans[0].to_dict() == plans[1].to_dict()
    p = plans[0]
    assert p.target["reached"] and p.macs_ratio >= 2.0 and p.no_gain == []
    assert all(k % 8 == 0 for k in p.keep.values())
    assert p.predicted_speedup > 1.5   # latency follows MACs in this table
    # Ratios are what Torch-Pruning needs to keep exactly `keep` channels.
    for g, k in p.keep.items():
        assert int(groups[g]["width"] * (1 - p.ratios[g])) == k
    lat = lt.plan_widths(table, specs, groups, target=("latency", 1.5))
    assert lat.target["reached"] and lat.predicted_speedup >= 1.5


def test_plan_prefers_the_group_that_saves_latency_then_follows_sensitivity():
    _, specs, groups, _ = _toy_table(macs_timer)
    stem_g = next(g for g, e in groups.items() if "stem.0" in e["out"])
    pw_g = next(g for g, e in groups.items() if "pw.0" in e["out"])

    def stem_only(spec, cin, cout):   # only the stem group's layers get faster when narrowed
        return cout * 0.1 if spec.name in ("stem.0", "dw.0") else 1.0
    table = lt.build_table(specs, "onnxruntime", 1, timer=stem_only, cpu="c", version="v")
    p = lt.plan_widths(table, specs, groups, target=("channels", 0.25))
    assert p.keep[pw_g] == 48 and p.keep[stem_g] < 32
    # A sensitivity curve that makes the stem group costly in accuracy moves the cut elsewhere
    # when latency is equal.
    _, _, _, even = _toy_table(macs_timer)
    drop = lambda g, r: 50.0 * r if g == stem_g else 0.0  # noqa: E731
    q = lt.plan_widths(even, specs, groups, target=("channels", 0.2), drop=drop)
    assert q.ranking == "latency/sensitivity" and q.keep[stem_g] == 32 and q.keep[pw_g] < 48


def test_flat_table_reports_no_latency_bought():
    model, specs, groups, table = _toy_table(flat_timer)
    with pytest.warns(UserWarning, match="buys no predicted latency") as rec:
        p = lt.plan_widths(table, specs, groups, target=("macs", 1.5))
    assert p.target["reached"] and p.no_gain and p.predicted_speedup == pytest.approx(1.0)
    assert any(g in str(rec[0].message) for g in p.no_gain)
    # The same report for a model pruned by other means (uniform ratio).
    res = prune(model, PruneConfig(ratio=0.5, **{"finetune_epochs": 0}), example_input=X)
    ctx = lt.LatencyContext(specs, groups, table, tuple(X.shape))
    with pytest.warns(UserWarning, match="buys no predicted latency"):
        rep = lt.report(ctx, res.model, X, measure=False)
    assert sorted(rep["no_gain"]) == sorted(groups) and rep["predicted_speedup"] == pytest.approx(1.0)
    assert "measured" not in rep
    assert {r["layer"] for r in rep["layers"]} == set(specs)


def test_prune_with_latency_ratio_source(monkeypatch, tmp_path):
    real = lt.build_table
    monkeypatch.setattr(lt, "build_table", lambda specs, runtime, threads, **kw: real(
        specs, runtime, threads, cache_dir=kw.get("cache_dir"), timer=macs_timer, cpu="c", version="v"))
    model = Toy().eval()
    cfg = PruneConfig(ratio_source="latency", target_macs_ratio=2.0, latency_measure=False,
                      latency_cache=str(tmp_path), finetune_epochs=0)
    res = prune(model, cfg, example_input=X)
    assert res.latency is not None and res.macs_ratio >= 1.9
    plan = res.latency["plan"]
    assert plan["target"] == {"kind": "macs", "value": 2.0, "reached": True}
    assert channel_counts(res.model)["pw.0"] == plan["keep"][next(g for g in plan["keep"] if "pw" in g)]
    assert res.latency["predicted_speedup"] > 1.0 and "measured_speedup" not in res.latency
    assert list(tmp_path.glob("latency_onnxruntime-*_1t.json"))
    assert res.model(X).shape == (1, 10)


@pytest.mark.parametrize("kwargs, key, words", [
    (dict(ratio_source="latncy"), "ratio_source", "Did you mean 'latency'"),
    (dict(ratio_source="latency", latency_runtime="tflite"), "latency_runtime", "onnxruntime, openvino"),
    (dict(ratio_source="latency", latency_threads=0), "latency_threads", ">= 1"),
    (dict(target_latency_ratio=2.0), "target_latency_ratio", "ratio_source: latency"),
    (dict(ratio_source="latency", target_latency_ratio=0.5), "target_latency_ratio", "> 1"),
    (dict(ratio_source="latency", global_pruning=True), "ratio_source", "global_pruning"),
    (dict(latency_sensitivity=True), "latency_sensitivity", "ratio_source: latency"),
    (dict(method="unstructured", ratio_source="latency"), "ratio_source", "structured"),
])
def test_config_errors_name_the_key_and_fix(kwargs, key, words):
    with pytest.raises(RecipeError) as e:
        PruneConfig(**kwargs)
    assert e.value.key == key and words in str(e.value)


@pytest.mark.slow   # exports and times two small models in ONNX Runtime
def test_prune_latency_measures_predicted_and_real_speedup(tmp_path):
    torch.manual_seed(0)
    model = Toy().eval()
    cfg = PruneConfig(ratio_source="latency", ratio=0.5, latency_cache=str(tmp_path), finetune_epochs=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = prune(model, cfg, example_input=torch.randn(1, 3, 64, 64))
    lat = res.latency
    assert lat["measured"]["pruned"]["median_ms"] > 0 and lat["measured_speedup"] > 0
    assert lat["predicted_speedup"] > 0 and lat["runtime"] == "onnxruntime" and lat["threads"] == 1
    assert list(tmp_path.glob("latency_onnxruntime-*_1t.json"))


@pytest.mark.slow   # trains, times a real latency table, runs the pipeline twice: ~1 min quiet
def test_prune_stage_with_latency_ratio_source_through_the_pipeline(tmp_path):
    """A recipe's prune stage with `ratio_source: latency`: the table is timed for real in ONNX
    Runtime, cached under the run's cache/, reused by a forced rerun, and the predicted speedup
    reaches the stage's metrics and the report."""
    import yaml

    from edgecnn.pipeline import Pipeline
    from edgecnn.recipe import load_recipe
    from edgecnn.report import build_report

    recipe = {
        "name": "lat", "data": {"source": "digits"}, "model": {"source": "bn_cnn", "options": {"width": 8}},
        "stages": [{"train": {"epochs": 1, "batch_size": 64}},
                   {"prune": {"ratio_source": "latency", "target_macs_ratio": 1.5, "latency_measure": False,
                              "finetune_epochs": 0}}],
        "export": {"formats": ["onnx"], "precisions": ["fp32"], "verify_samples": 50},
        "targets": ["local-cpu"], "bench": {"runs": 5, "warmup": 1, "limit": 50, "throughput_seconds": 0.1},
        "report": {"formats": ["json"]},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "runs" / "lat"
    Pipeline(load_recipe(tmp_path / "r.yaml"), run_dir).run()
    tables = sorted((run_dir / "cache").glob("latency_onnxruntime-*_1t.json"))
    assert len(tables) == 1
    stamp = tables[0].stat().st_mtime_ns
    m = json.loads((run_dir / "manifest.json").read_text())["stages"]["prune"]["metrics"]
    assert m["latency_runtime"] == "onnxruntime" and m["macs_ratio"] >= 1.5
    # On a model this small the timings are mostly overhead: a cut that buys nothing must say so.
    assert m["predicted_speedup"] > 1.0 or m["latency_no_gain"]
    assert "measured_speedup" in m and m["measured_speedup"] is None   # latency_measure: false
    report = build_report(json.loads((run_dir / "manifest.json").read_text()), run_dir)
    prune_entry = next(s for s in report["stages"] if s["name"] == "prune")
    assert prune_entry["metrics"]["predicted_speedup"] == m["predicted_speedup"]
    # A forced rerun of the stage finds the table in the run's cache instead of timing it again.
    Pipeline(load_recipe(tmp_path / "r.yaml"), run_dir, force=True).run()
    assert tables[0].stat().st_mtime_ns == stamp
