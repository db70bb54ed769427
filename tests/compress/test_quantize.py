"""int8 PTQ / QAT on one PT2E graph: accuracy bounds, checkpoint round trip, ONNX agreement, errors."""
from __future__ import annotations

import copy
import dataclasses
import json
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from edgecnn.compress.calibration import load_calibration, read_manifest
from edgecnn.compress.quantize import (ACTIVATION_OBSERVERS, QuantizeConfig, load_quantized, quantizable_layers,
                                       quantize, save_quantized, export_graph)
from edgecnn.config import from_dict
from edgecnn.data import Preprocess
from edgecnn.errors import CheckpointError, DataError, EdgecnnError, RecipeError
from edgecnn.models import ModelConfig, build_model
from edgecnn.train import TrainConfig, evaluate, fit


@pytest.fixture(scope="module")
def trained(digits):
    """bn_cnn trained briefly on digits (8x8): a real, BN-folding model (~94% test) in ~30 s.

    Trained enough to be confident: on a barely trained model many test images sit within one int8
    output step of a tie, and ONNX Runtime's rounding then flips more than 1% of them.
    """
    torch.manual_seed(0)
    model = build_model(ModelConfig("bn_cnn"), digits.num_classes, digits.input_shape[0])
    fit(model, digits, TrainConfig(epochs=5, lr=5e-3), seed=0)
    return model.eval()


FAST = dict(calibration_samples=64)


def _lowered(path):
    """The exported QDQ file lowered as the exporter lowers it by default ('auto': exact on this machine's
    ONNX Runtime, whose u8s8 kernels saturate on x64 CPUs without VNNI): what ships, run fused."""
    from edgecnn.export.lowering import lower_file, preset

    out = path.with_name(path.stem + "_lowered.onnx")
    lower_file(path, out, preset("auto"))
    return out


def test_ptq_accuracy_within_bound_and_input_untouched(trained, digits):
    before = copy.deepcopy(trained.state_dict())
    res = quantize(trained, QuantizeConfig(**FAST), digits)
    assert res.float_test["n"] == res.int8_test["n"] == len(digits.splits["test"])
    assert res.accuracy_drop <= 1.5, res.to_dict()
    assert res.bn_folded == 6                          # every conv-BN pair folded
    assert len(res.quantized_layers) == 7 and res.kept_float == []
    assert res.calibration["count"] == 64 and len(res.calibration["sha256"]) == 64
    assert all(torch.equal(v, before[k]) for k, v in trained.state_dict().items())
    assert not trained.training
    d = res.to_dict()
    json.dumps(d)
    assert d["accuracy_drop"] == res.accuracy_drop
    # PTQ's defaults (observer 'auto', bias_correction null) are searched: observer x correction on/off
    assert d["config"]["observer"] is None and d["observer"] == d["observer_search"]["chosen"]
    assert d["config"]["bias_correction"] is None and d["bias_correction"] == d["observer_search"]["bias_correction"]
    assert [(c["observer"], c["bias_correction"]) for c in d["observer_search"]["candidates"]] == [
        ("histogram", True), ("histogram", False), ("minmax", True), ("minmax", False)]
    assert bool(res.bias_corrected) == res.bias_correction


@pytest.mark.parametrize("observer", ACTIVATION_OBSERVERS.names())
def test_every_observer_quantizes(trained, digits, observer):
    res = quantize(trained, QuantizeConfig(observer=observer, **FAST), digits)
    assert res.accuracy_drop <= 3.0, (observer, res.int8_test)


def test_auto_observer_keeps_the_candidate_that_agrees_with_float_on_most_val_images(trained, digits):
    cands = ["percentile", "histogram", "minmax"]
    res = quantize(trained, QuantizeConfig(observer="auto", observer_candidates=cands, **FAST), digits)
    search = res.observer_search
    choices = [(o, bc) for o in cands for bc in (True, False)]
    assert [(c["observer"], c["bias_correction"]) for c in search["candidates"]] == choices
    assert search["val_images"] == len(digits.splits["val"])
    # each candidate's figures are those of a plain PTQ with that observer and correction, on the same val images
    vx, _ = digits.tensors("val")
    with torch.no_grad():
        ref = trained.eval()(vx).argmax(1)
        for c in search["candidates"]:
            alone = quantize(trained, QuantizeConfig(observer=c["observer"], bias_correction=c["bias_correction"],
                                                     **FAST), digits)
            assert alone.observer_search is None and bool(alone.bias_corrected) == c["bias_correction"]
            agree = 100.0 * (alone.model(vx).argmax(1) == ref).float().mean().item()
            assert c["val_agreement"] == pytest.approx(agree, abs=0.01), c
    best = max(range(len(choices)), key=lambda i: (search["candidates"][i]["val_agreement"],
                                                   search["candidates"][i]["val_top1"], -i))
    assert (search["chosen"], search["bias_correction"]) == choices[best]
    assert search["chosen"] == res.observer == res.to_dict()["observer"]
    assert search["bias_correction"] == res.bias_correction == res.to_dict()["bias_correction"]
    # the model returned is the chosen candidate's PTQ
    chosen = quantize(trained, QuantizeConfig(observer=search["chosen"], bias_correction=search["bias_correction"],
                                              **FAST), digits)
    with torch.no_grad():
        assert torch.equal(res.model(vx), chosen.model(vx))
    assert res.bias_corrected == chosen.bias_corrected and res.int8_test == chosen.int8_test
    json.dumps(res.to_dict())


def test_a_named_observer_or_a_set_bias_correction_narrows_the_search(trained, digits):
    named = quantize(trained, QuantizeConfig(observer="minmax", **FAST), digits).observer_search
    assert [(c["observer"], c["bias_correction"]) for c in named["candidates"]] == [("minmax", True), ("minmax", False)]
    off = quantize(trained, QuantizeConfig(bias_correction=False, **FAST), digits)
    assert [c["bias_correction"] for c in off.observer_search["candidates"]] == [False, False]
    assert off.bias_corrected == [] and off.bias_correction is False
    fixed = quantize(trained, QuantizeConfig(observer="histogram", bias_correction=True, **FAST), digits)
    assert fixed.observer_search is None and fixed.bias_corrected and fixed.to_dict()["bias_correction"] is True


def test_per_tensor_with_bias_correction(trained, digits):
    res = quantize(trained, QuantizeConfig(per_channel=False, bias_correction=True, **FAST), digits)
    assert set(res.bias_corrected) == set(quantizable_layers(export_graph(trained, digits.example_input(2))))
    assert res.accuracy_drop <= 3.0


def test_bias_correction_is_chosen_for_ptq_by_default_and_off_for_qat(trained, digits):
    on = quantize(trained, QuantizeConfig(observer="minmax", bias_correction=True, **FAST), digits)
    assert set(on.bias_corrected) == set(quantizable_layers(export_graph(trained, digits.example_input(2))))
    off = quantize(trained, QuantizeConfig(observer="minmax", bias_correction=False, **FAST), digits)
    assert off.bias_corrected == []
    assert QuantizeConfig().resolved_bias_correction is True      # what _ptq does when nothing is searched
    assert QuantizeConfig(mode="qat").resolved_bias_correction is False
    assert from_dict(QuantizeConfig, {"mode": "qat", "bias_correction": None}, "quantize").resolved_bias_correction is False


def test_seven_bit_weights_stay_in_reduced_range(trained, digits):
    """weight_bits=7: every int8 weight in [-64, 64] (no pair of u8 x s8 products can saturate int16)."""
    res = quantize(trained, QuantizeConfig(weight_bits=7, **FAST), digits)
    dq = [n for n in res.model.graph.nodes if "dequantize_per_channel" in str(n.target)]
    assert len(dq) == 7 and all((n.args[4], n.args[5]) == (-64, 64) for n in dq)
    ints = [getattr(res.model, n.args[0].target) for n in dq]        # the folded int8 weights
    assert all(w.dtype == torch.int8 and int(w.abs().max()) <= 64 for w in ints)
    assert max(int(w.abs().max()) for w in ints) == 64                 # the range is used, not just clamped
    assert res.accuracy_drop <= 3.0
    with pytest.raises(RecipeError, match="weight_bits"):
        from_dict(QuantizeConfig, {"weight_bits": 6}, "quantize")


def test_config_errors_name_the_key():
    with pytest.raises(RecipeError, match="observer.*moving_average"):
        from_dict(QuantizeConfig, {"mode": "qat", "observer": "histogram"}, "quantize")
    with pytest.raises(RecipeError, match="Did you mean 'percentile'"):
        from_dict(QuantizeConfig, {"observer": "percentil"}, "quantize")
    with pytest.raises(RecipeError, match="bias_correction"):
        from_dict(QuantizeConfig, {"mode": "qat", "bias_correction": True}, "quantize")
    with pytest.raises(RecipeError, match="max_accuracy_drop"):
        from_dict(QuantizeConfig, {"max_accuracy_drop": -1}, "quantize")
    with pytest.raises(RecipeError, match="observer_candidates.*'auto'.*list one or more of"):
        from_dict(QuantizeConfig, {"observer": "auto", "observer_candidates": ["auto", "minmax"]}, "quantize")
    with pytest.raises(RecipeError, match="observer_candidates"):
        from_dict(QuantizeConfig, {"observer_candidates": []}, "quantize")
    with pytest.raises(RecipeError, match="observer.*PTQ calibration observer"):
        from_dict(QuantizeConfig, {"mode": "qat", "observer": "auto"}, "quantize")
    from edgecnn.compress.quantize import make_quantizer
    with pytest.raises(EdgecnnError, match="'auto' is resolved by quantize"):
        make_quantizer(QuantizeConfig())          # a single quantizer needs one observer
    cfg = from_dict(QuantizeConfig, {"mode": "qat", "train": {"epochs": 1}}, "quantize")
    assert cfg.train.epochs == 1 and cfg.resolved_observer == "moving_average"


def test_save_load_identical_and_onnx_agrees(trained, digits, tmp_path):
    import onnxruntime as ort

    res = quantize(trained, QuantizeConfig(**FAST), digits)
    path = save_quantized(tmp_path / "q.pt2", res.model, digits.example_input(2))
    assert path.is_file() and not list(tmp_path.glob(".q.pt2*"))     # atomic: no temp file left
    loaded = load_quantized(path)
    x, _ = digits.tensors("test")
    with torch.no_grad():
        ref = res.model(x)
        assert torch.equal(loaded(x), ref)
        assert torch.equal(loaded(x[:3]), ref[:3])                   # dynamic batch survived
    onnx_path = tmp_path / "q.onnx"
    torch.onnx.export(loaded, (x[:2],), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},)
                      ).save(str(onnx_path))
    sess = ort.InferenceSession(str(_lowered(onnx_path)), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    agree = (out.argmax(1) == ref.numpy().argmax(1)).mean()
    assert agree >= 0.99, agree
    assert any(n.op_type == "QuantizeLinear" for n in __import__("onnx").load(str(onnx_path)).graph.node)


def test_load_refuses_pickled_payloads(trained, digits, tmp_path):
    res = quantize(trained, QuantizeConfig(**FAST), digits)
    good = save_quantized(tmp_path / "q.pt2", res.model, digits.example_input(2))
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("weights_config.json"):
                cfg = json.loads(data)
                first = next(iter(cfg["config"]))
                cfg["config"][first]["use_pickle"] = True
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    with pytest.raises(CheckpointError, match="unpickled"):
        load_quantized(bad)
    with pytest.raises(CheckpointError, match="no such"):
        load_quantized(tmp_path / "missing.pt2")


def test_partially_quantized_graph_exports_to_onnx(trained, digits, tmp_path):
    import onnxruntime as ort

    res = quantize(trained, QuantizeConfig(float_layers=["features.3.0", "classifier"], **FAST), digits)
    assert "features.3.0" not in res.quantized_layers and "classifier.2" not in res.quantized_layers
    assert len(res.quantized_layers) == 5
    x, _ = digits.tensors("test")
    onnx_path = tmp_path / "p.onnx"
    torch.onnx.export(res.model, (x[:2],), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},)
                      ).save(str(onnx_path))
    sess = ort.InferenceSession(str(_lowered(onnx_path)), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = res.model(x).numpy()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99
    with pytest.raises(EdgecnnError, match="Did you mean 'features.3.0'"):
        quantize(trained, QuantizeConfig(float_layers=["features.3.O"], **FAST), digits)


def test_nan_calibration_is_an_error(digits):
    pre = digits.preprocess
    broken = dataclasses.replace(digits, preprocess=Preprocess(pre.size, pre.channels, pre.mean, (0.0,)))
    with pytest.raises(DataError, match=r"(?s)hold NaN or inf.*std of 0"):
        load_calibration(broken, 64)


def test_too_few_calibration_samples(digits, tmp_path):
    n = len(digits.splits["calibration"])
    with pytest.raises(DataError, match=f"has {n} images, {n + 1} were asked for.*calibration_size"):
        load_calibration(digits, n + 1)
    manifest = tmp_path / "d.yaml"
    manifest.write_text("split: train\ncount: 10\n")
    with pytest.raises(DataError, match="selects 10 images.*asks for 20"):
        load_calibration(digits, 20, manifest)
    manifest.write_text("split: val\n")
    with pytest.raises(RecipeError, match="split"):
        load_calibration(digits, 20, manifest)


def test_manifest_selection(digits, tmp_path):
    m = read_manifest("calibration/mnist5k-256.yaml")
    assert (m.source, m.split, m.count) == ("mnist5k", "train", 256)
    manifest = tmp_path / "d.yaml"
    manifest.write_text("split: train\ncount: 40\nseed: 3\n")
    a = load_calibration(digits, 40, manifest, batch_size=16)
    b = load_calibration(digits, 40, manifest, batch_size=16)
    assert a.count == 40 and [len(x) for x in a.batches] == [16, 16, 8]
    assert a.info["sha256"] == b.info["sha256"]                       # a manifest names a fixed set
    assert set(a.info["indices"]) <= set(digits.splits["train"].indices.tolist())
    test_idx = digits.splits["test"].indices[:3].tolist()
    manifest.write_text(f"indices: {test_idx}\n")
    with pytest.raises(EdgecnnError, match="validation or test"):
        load_calibration(digits, 3, manifest)


def _booby_trapped(model, layers=(0,)):
    """A copy whose first conv has one channel with 1000x weights that ReLU always zeroes.

    The float model loses only that channel (its BN output is hugely negative), but a per-tensor
    int8 scale for the layer's weights is set by the outlier, so every other channel rounds to ~0:
    keeping exactly that layer float is the fix.
    """
    m = copy.deepcopy(model)
    with torch.no_grad():
        for i in layers:
            m.features[i][0].weight[0] *= 1000.0
            m.features[i][1].bias[0] = -1e9
    return m


@pytest.mark.slow
def test_accuracy_aware_keeps_the_sensitive_layer_float(trained, digits):
    trap = _booby_trapped(trained)
    cfg = QuantizeConfig(per_channel=False, max_accuracy_drop=1.0, fallback_candidates=3, **FAST)
    plain = quantize(trap, dataclasses.replace(cfg, max_accuracy_drop=None), digits)
    assert plain.float_test["top1"] > 60 and plain.accuracy_drop > 10, (plain.float_test, plain.int8_test)
    res = quantize(trap, cfg, digits)
    assert res.fallback["budget_met"], res.fallback["message"]
    assert res.kept_float[0] == "features.0.0"
    assert res.fallback["sensitivity"][0]["layer"] == "features.0.0"
    assert res.float_layers[0]["recovered_points"] > 10
    assert "features.0.0" not in res.quantized_layers
    assert res.accuracy_drop <= 3.0


@pytest.mark.slow
def test_accuracy_aware_says_when_budget_cannot_be_met(trained, digits):
    trap = _booby_trapped(trained, layers=(0, 1))      # two broken layers, but one float layer allowed
    cfg = QuantizeConfig(per_channel=False, max_accuracy_drop=1.0, fallback_candidates=1, **FAST)
    res = quantize(trap, cfg, digits)
    assert not res.fallback["budget_met"]
    assert "not reached" in res.fallback["message"] and "fallback_candidates" in res.fallback["message"]
    assert len(res.kept_float) == 1


@pytest.mark.slow
def test_qat_runs_and_converts(trained, digits, tmp_path):
    cfg = from_dict(QuantizeConfig, {"mode": "qat", "calibration_samples": 64, "freeze_bn_after": 1,
                                     "freeze_observers_after": 1,
                                     "train": {"epochs": 2, "lr": 3e-4, "warmup_epochs": 0}}, "quantize")
    res = quantize(trained, cfg, digits)
    assert res.qat["epochs_run"] == 2
    assert res.bn_folded == 6 and len(res.quantized_layers) == 7
    assert res.accuracy_drop <= 2.0, res.int8_test
    path = save_quantized(tmp_path / "qat.pt2", res.model, digits.example_input(2))
    x, _ = digits.tensors("test", limit=50)
    with torch.no_grad():
        assert torch.equal(load_quantized(path)(x), res.model(x))
    evaluate(res.model, digits, "val")   # the converted graph runs on any batch size


def test_fallback_search_grows_then_shrinks_to_fewest_layers():
    """Greedy growth needs A, B and C to meet the budget, but {B, C} alone meets it: the shrink step
    must quantize A again. Synthetic val top-1 per float set, so the search logic is tested exactly."""
    from edgecnn.compress.quantize import _fallback_search

    acc = {(): 80.0, ("A",): 84.0, ("B",): 83.0, ("C",): 82.0, ("D",): 79.0,
           ("A", "B"): 86.0, ("A", "B", "C"): 89.5, ("A", "C"): 88.0, ("B", "C"): 89.2}
    calls = []

    def measure(float_layers):
        calls.append(tuple(float_layers))
        return acc[tuple(sorted(float_layers))], 0.0

    out = _fallback_search(["D", "C", "B", "A"], measure, float_top1=90.0, budget=1.0, max_candidates=4,
                           kept=[], weights={"A": 10, "B": 20, "C": 30, "D": 40})
    assert [s["layer"] for s in out["sensitivity"]] == ["A", "B", "C", "D"]
    assert out["grown"] == ["A", "B", "C"]
    assert out["removed_by_shrink"] == ["A"]
    assert out["budget_met"] and out["kept_float"] == ["B", "C"] and out["int8_val_top1"] == 89.2
    cost = {a["layer"]: a for a in out["float_layers"]}
    assert cost["B"]["val_top1_if_int8_again"] == 82.0 and cost["C"]["val_top1_if_int8_again"] == 83.0
    assert cost["C"]["extra_weight_bytes"] == 90
    assert out["trials"] == len(calls)


def test_fallback_search_shows_progress_layer_by_layer(monkeypatch):
    """The leave-one-out ranking runs one PTQ per layer (minutes on a 52-layer model at 224 px): the
    progress display counts the layers and names the one being measured; kept layers are skipped."""
    import importlib

    q = importlib.import_module("edgecnn.compress.quantize")   # the package exports a function of that name
    shown, bars = [], []

    def fake_progress(items, total, description):
        bars.append((description, total))
        yield from items

    monkeypatch.setattr(q, "progress", fake_progress)
    monkeypatch.setattr(q, "status", shown.append)
    q._fallback_search(["A", "K", "B"], lambda fl: (80.0 + len(fl), 0.0), float_top1=90.0, budget=1.0,
                       max_candidates=0, kept=["K"])
    assert bars == [("int8 sensitivity", 2)] and shown == ["A", "B"]


def test_fallback_search_stops_at_one_layer_and_reports_unreachable():
    from edgecnn.compress.quantize import _fallback_search

    acc = {(): 80.0, ("A",): 89.5, ("B",): 81.0, ("A", "B"): 89.6}

    def measure(float_layers):
        return acc[tuple(sorted(float_layers))], 0.0

    out = _fallback_search(["A", "B"], measure, 90.0, 1.0, 4, [])
    assert out["kept_float"] == ["A"] and out["float_layers"][0]["val_top1_if_int8_again"] == 80.0
    assert "removed_by_shrink" not in out
    out = _fallback_search(["A", "B"], measure, 90.0, 0.2, 4, [])
    assert not out["budget_met"] and "not reached" in out["message"]
    assert out["kept_float"] == ["A", "B"]


@pytest.mark.parametrize("source", ["bn_cnn", pytest.param("torchvision:mobilenet_v3_small", marks=pytest.mark.slow)])
def test_qat_freezing_stops_bn_statistics_and_observer_ranges(source):
    """After freezing, a training-mode forward leaves BN running statistics and fake-quant ranges as
    they were while still fake-quantizing; before freezing, both move. mobilenet_v3_small: BN momentum
    0.01, hardswish and squeeze-excitation in the QAT graph."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from edgecnn.compress.quantize import _qat_train_mode, make_quantizer

    torch.manual_seed(0)
    model = build_model(ModelConfig(source), 10, 1).eval()
    x = torch.randn(4, 1, 32, 32)
    prepared = prepare_qat_pt2e(export_graph(model, x[:2]), make_quantizer(QuantizeConfig(mode="qat")))

    def stats():
        return {k: v.clone() for k, v in prepared.named_buffers()
                if k.endswith(("running_mean", "running_var", "min_val", "max_val", "scale"))}

    def moved(before):
        after = dict(prepared.named_buffers())
        return {k.rsplit(".", 1)[-1] for k, v in before.items() if not torch.equal(v, after[k])}

    _qat_train_mode(prepared, bn_frozen=False, observers_frozen=False)
    before = stats()
    prepared(x)
    assert {"running_mean", "running_var", "min_val", "max_val"} <= moved(before)

    _qat_train_mode(prepared, bn_frozen=True, observers_frozen=True)
    before = stats()
    out = prepared(x * 3 + 1)
    assert moved(before) == set()
    assert prepared.training and torch.isfinite(out).all()


class _WideReLU6(torch.nn.Module):
    """conv -> BN -> ReLU6 -> conv, with pre-activations spread far beyond [0, 6] (torchvision's
    MobileNetV2 blocks; on a 224-px mobilenet_v2 built as the suite builds it the old ranges
    were 1.6-3.2x wider than [0, 6], here ~12x): the case the ReLU6 annotation is about."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(16)
        self.act = torch.nn.ReLU6()
        self.conv2 = torch.nn.Conv2d(16, 4, 1)
        with torch.no_grad():
            self.conv1.weight.mul_(20.0)

    def forward(self, x):
        return self.conv2(self.act(self.bn(self.conv1(x))))


def _clamp_qparams(qgraph):
    """(scale, zero point) of the quantize node reading the ReLU6 (hardtanh) output."""
    for n in qgraph.graph.nodes:
        if "quantize_per_tensor" in str(n.target) and "hardtanh" in str(n.args[0].target):
            return float(n.args[1]), int(n.args[2])
    return None


def test_relu6_output_is_observed_after_the_clamp():
    """conv -> ReLU6: int8 range [0, <= 6] (zero point -128), not the conv's pre-activation range.
    litert's annotation (clamped_outputs=False) spends the 256 levels on the conv's pre-activation
    range, most of which the clamp discards (benchmarks/results/quantize_224.md)."""
    import importlib

    Q = importlib.import_module("edgecnn.compress.quantize")
    torch.manual_seed(1)
    model = _WideReLU6().eval()
    batches = [torch.randn(16, 3, 8, 8) for _ in range(4)]
    graph = export_graph(model, batches[0])
    x = torch.randn(32, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    out = {}
    for clamped in (True, False):
        cfg = QuantizeConfig(observer="histogram", clamped_outputs=clamped, bias_correction=False, calibration_samples=64)
        q = Q._ptq(graph, cfg, batches)
        with torch.no_grad():
            err = (q(x) - ref).pow(2).mean() / ref.pow(2).mean()
        out[clamped] = (_clamp_qparams(q), float(err))
    (scale, zp), err = out[True]
    assert zp == -128 and scale * 255 <= 6.0 + 1e-4, out
    assert out[False][0] is not None and out[False][0][0] > 4 * scale, out   # the old range was far wider
    assert err < 0.75 * out[False][1], out                                     # and the output error larger
    assert QuantizeConfig().clamped_outputs is True


@pytest.mark.parametrize("source", ["bn_cnn", "torchvision:resnet18",
                                    pytest.param("torchvision:mobilenet_v3_small", marks=pytest.mark.slow),
                                    pytest.param("torchvision:efficientnet_b0", marks=pytest.mark.slow),
                                    pytest.param("torchvision:mobilenet_v2", marks=pytest.mark.slow)])
def test_clamped_outputs_changes_only_graphs_with_relu6(source):
    """Models without conv -> ReLU6 quantize to the same graph and outputs with clamped_outputs on or off."""
    import importlib

    Q = importlib.import_module("edgecnn.compress.quantize")
    torch.manual_seed(0)
    model = build_model(ModelConfig(source), 10, 1).eval()
    x = torch.randn(4, 1, 32, 32)
    graph = export_graph(model, x)
    seen = {}
    for clamped in (True, False):
        q = Q._ptq(graph, QuantizeConfig(observer="histogram", clamped_outputs=clamped, bias_correction=False), [x])
        ops = [(str(n.target), tuple(getattr(a, "name", a) for a in n.args if isinstance(a, torch.fx.Node)))
               for n in q.graph.nodes]
        with torch.no_grad():
            seen[clamped] = (ops, q(x))
    same = seen[True][0] == seen[False][0] and torch.equal(seen[True][1], seen[False][1])
    assert same == (source != "torchvision:mobilenet_v2")


class _SqueezeExcite(nn.Module):
    """The mobilenet_v3 pieces whose int8 rounding runtimes disagreed on: hardswish, a squeeze-excitation
    gate (average pool, 1x1 convs, hardsigmoid, mul) and a global average pool before the classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardswish())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        x = self.stem(x)
        gate = nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))
        return self.head(x * gate)


@pytest.fixture(scope="module")
def se_quantized(digits):
    torch.manual_seed(0)
    return quantize(_SqueezeExcite().eval(), QuantizeConfig(**FAST), digits).model


def test_average_pools_get_their_own_output_qparams(se_quantized):
    """A pool whose output shares its input's qparams puts exact means on rounding ties (k + 1/2 steps)."""
    pools = [n for n in se_quantized.graph.nodes if n.op == "call_function"
             and n.target == torch.ops.aten.adaptive_avg_pool2d.default]
    assert len(pools) == 2
    for p in pools:
        dq_in, (q_out,) = p.args[0], list(p.users)
        assert "dequantize_per_tensor" in str(dq_in.target) and "quantize_per_tensor" in str(q_out.target)
        assert tuple(dq_in.args[1:3]) != tuple(q_out.args[1:3]), p.name


def test_int8_layer_biases_lie_on_the_int32_grid(se_quantized):
    from edgecnn.compress.quantize import _get_attr

    checked = 0
    for n in se_quantized.graph.nodes:
        if n.op == "call_function" and n.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
            x, w, b = n.args[:3]
            s_w = w.args[1]
            s_w = _get_attr(se_quantized, s_w.target) if isinstance(s_w, torch.fx.Node) else torch.tensor(s_w)
            k = _get_attr(se_quantized, b.target).double() / (torch.tensor(float(x.args[1])) * s_w.float()).double()
            assert torch.allclose(k, k.round(), atol=1e-3), n.name
            checked += 1
    assert checked == 4


@pytest.mark.parametrize("optimize", [False, True], ids=["qdq-literal", "fused-int8-kernels"])
def test_onnxruntime_computes_what_the_fake_quant_graph_computes(se_quantized, digits, tmp_path, optimize):
    """Not a single int8 logit one step off, either running the QDQ graph literally or with ORT's integer
    kernels (QLinearConv, QLinearMul, QGemm). Pools sharing their input's qparams (rounding ties) put logits
    a step off in both modes; a float bias that QLinearConv rounds to int32 did in the fused one."""
    from edgecnn.export.lowering import ort_session

    x, _ = digits.tensors("test")
    with torch.no_grad():
        ref = se_quantized(x).numpy()
    path = tmp_path / "se.onnx"
    torch.onnx.export(se_quantized, (x[:2],), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},)
                      ).save(str(path))
    step = [n for n in se_quantized.graph.nodes if "quantize_per_tensor" in str(n.target)][-1].args[1]
    sess = ort_session(_lowered(path) if optimize else path, optimize=optimize)
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    off = int((np.abs(out - ref) > step / 2).sum())
    assert off == 0, f"{off} of {out.size} logits differ by a quantization step"


class _Residual(nn.Module):
    """The residual patterns litert's add annotators missed under torch.export's current metadata: a
    ResNet block (add -> ReLU, the block's output read by the next block's add) and MobileNetV2's
    chained blocks (one add's output read by the next add)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.b2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.b3 = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.b4 = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.b1(x))      # ResNet: add -> ReLU
        x = torch.relu(x + self.b2(x))      # reads the previous block's ReLU output
        x = x + self.b3(x)                  # MobileNetV2: plain add ...
        x = x + self.b4(x)                  # ... read by the next add
        return self.head(x)


def _float_reads(qgraph) -> list[str]:
    """Adds (and the ReLU fused after one) reading a tensor that is not a dequantize output."""
    bad = []
    for n in qgraph.graph.nodes:
        if n.op == "call_function" and n.target in (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor):
            bad += [f"{n.name} <- {a.name}" for a in n.args[:2] if "dequantize_per_tensor" not in str(a.target)]
    return bad


@pytest.fixture(scope="module")
def residual_quantized(digits):
    torch.manual_seed(0)
    model = _Residual().eval()
    fit(model, digits, TrainConfig(epochs=1, lr=5e-3), seed=0)
    return quantize(model.eval(), QuantizeConfig(**FAST), digits).model


def test_residual_adds_are_int8_ops(residual_quantized):
    """Every add reads dequantized (int8) inputs and its output, or its ReLU's, is quantized."""
    adds = [n for n in residual_quantized.graph.nodes if n.op == "call_function"
            and n.target in (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)]
    assert len(adds) == 4
    assert _float_reads(residual_quantized) == []
    for n in adds:
        (user,) = n.users
        out = next(iter(user.users)) if user.target in (torch.ops.aten.relu.default, torch.ops.aten.relu_.default) \
            else user
        assert "quantize_per_tensor" in str(out.target), n.name


@pytest.mark.parametrize("optimize", [False, True], ids=["qdq-literal", "fused-int8-kernels"])
def test_residual_model_runs_in_integer_kernels_exactly(residual_quantized, digits, tmp_path, optimize):
    """With the adds int8 the ONNX lowerings have no float read to requantize (their one inexact
    pass) and ORT fuses every Add into QLinearAdd. Running the QDQ graph literally gives the
    fake-quant graph's logits exactly; QLinearAdd computes (a - za) * sa/sc + (b - zb) * sb/sc in
    its own float order, so an output on a rounding tie may land one step off: rare, never more. So
    may a literal run on some CPUs (PyTorch's and ORT's float convolutions sum in a different order
    with AVX2 than with AVX-512). On CPUs where ORT's u8s8 kernels saturate, the weights go uint8 too
    (the exporter's 'auto' lowering does the same)."""
    from edgecnn.export.lowering import LoweringConfig, lower_file, ort_fused_ops, ort_session, ort_u8s8_saturates

    x, _ = digits.tensors("test")
    with torch.no_grad():
        ref = residual_quantized(x).numpy()
    raw = tmp_path / "res.onnx"
    torch.onnx.export(residual_quantized, (x[:2],), dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch")},)).save(str(raw))
    lowered = tmp_path / "res_ort.onnx"
    result = lower_file(raw, lowered, LoweringConfig(requantize_float_inputs=True, uint8_weights=ort_u8s8_saturates()))
    assert not result.changes.get("requantize_float_inputs") and result.exact, result.to_dict()
    if optimize:
        ops = ort_fused_ops(lowered)
        assert ops.get("QLinearAdd") == 4 and "Add" not in ops, ops
    step = [n for n in residual_quantized.graph.nodes if "quantize_per_tensor" in str(n.target)][-1].args[1]
    sess = ort_session(lowered, optimize=optimize)
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    diff = np.abs(out - ref) / step
    off = int((diff > 0.5).sum())
    assert diff.max() < 1.5 and off <= (out.size // 500 if optimize else out.size // 1000), \
        f"{off} of {out.size} logits differ by a quantization step, the most by {diff.max():.2f} steps"
