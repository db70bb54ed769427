"""Pruning: MACs reached, shapes kept, checkpoints round-trip, errors that name the fix."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from edgecnn.compress import PruneConfig, prune
from edgecnn.compress.prune import IMPORTANCES, _bn_l1_hook, channel_counts
from edgecnn.compress.sensitivity import (SensitivityResult, plot_sensitivity, ratios_from_sensitivity,
                                          sensitivity_scan)
from edgecnn.config import from_dict
from edgecnn.data import DataConfig, load_data
from edgecnn.errors import EdgecnnError, RecipeError
from edgecnn.models import ModelConfig, build_model, count_macs, load_checkpoint, load_weights, save_checkpoint
from edgecnn.train import TrainConfig, fit

NO_FT = dict(finetune_epochs=0)
SHORT = TrainConfig(lr=1e-3, warmup_epochs=0.0, max_steps=12)   # fine-tunes stop after 12 steps


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(source="digits"), seed=0)


@pytest.fixture(scope="module")
def trained(data):
    model = build_model(ModelConfig("bn_cnn"), data.num_classes, data.input_shape[0])
    fit(model, data, TrainConfig(epochs=3), seed=0)
    return model.eval()


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_target_macs_ratio_is_reached_and_input_model_untouched(data, trained):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    res = prune(trained, PruneConfig(target_macs_ratio=2.0, **NO_FT), data)
    x = data.example_input(4)
    assert res.macs_before / res.macs_after >= 2.0
    assert res.macs_after == count_macs(res.model, data.input_shape)
    assert _outputs(res.model, x).shape == (4, data.num_classes)
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert channel_counts(trained)["features.7.0"] == 64
    assert res.channels_after["classifier.2"] == data.num_classes      # the classifier is left alone
    assert all(c % 8 == 0 for n, c in res.channels_after.items() if n != "classifier.2")   # round_to 8
    json.dumps(res.to_dict())


@pytest.mark.parametrize("source", ["bn_cnn", "simple_cnn"])
def test_pruned_model_round_trips_through_checkpoint(tmp_path, data, source):
    model = build_model(ModelConfig(source), data.num_classes, data.input_shape[0])
    res = prune(model, PruneConfig(ratio=0.5, **NO_FT), data)
    assert res.params_after < res.params_before
    path = save_checkpoint(tmp_path / "pruned.pt", res.model)
    x = data.example_input(8)
    via_config = build_model(ModelConfig(source, checkpoint=str(path)), data.num_classes, data.input_shape[0])
    fresh = build_model(ModelConfig(source), data.num_classes, data.input_shape[0])
    load_weights(fresh, load_checkpoint(path))
    for restored in (via_config, fresh):
        assert channel_counts(restored) == res.channels_after
        assert torch.equal(_outputs(restored, x), _outputs(res.model, x))


def test_distill_finetune_recovers_and_is_compared_with_plain(data, trained):
    cfg = PruneConfig(target_macs_ratio=2.0, finetune_epochs=1, compare_plain_finetune=True, train=SHORT)
    res = prune(trained, cfg, data)
    assert res.accuracy_after["top1"] > res.accuracy_pruned["top1"]
    assert res.accuracy_distill_finetune == res.accuracy_after
    assert res.accuracy_plain_finetune is not None
    assert res.history[-1]["finetune"] == "distill" and "compare_plain" in res.history[-1]
    assert any("plain cross-entropy" in n for n in res.notes)


def test_iterative_taylor_steps(data, trained):
    res = prune(trained, PruneConfig(ratio=0.5, steps=2, importance="taylor", finetune_epochs=1,
                                     finetune_with="plain", train=SHORT), data)
    assert [h["step"] for h in res.history] == [1, 2]
    assert res.history[0]["macs"] > res.history[1]["macs"] == res.macs_after
    assert res.channels_after["features.7.0"] == 32


@pytest.mark.parametrize("regularize", ["bn_l1", "group_lasso"])
def test_sparsity_training_then_prune(data, trained, regularize):
    cfg = PruneConfig(ratio=0.5, importance="bn_scale", regularize=regularize, reg_epochs=1, reg_strength=1e-3,
                      train=SHORT, **NO_FT)
    res = prune(trained, cfg, data)
    assert res.history[0]["regularize"] == regularize
    assert res.macs_ratio > 2.0
    assert _outputs(res.model, data.example_input(2)).shape == (2, data.num_classes)


def test_bn_l1_hook_adds_sign_of_bn_scales_to_their_gradients():
    model = build_model(ModelConfig("bn_cnn"), 10, 1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.weight.data.uniform_(-1, 1)
        bn.weight.grad = torch.zeros_like(bn.weight)
    _bn_l1_hook(0.01, ignored=[bns[0]])(model)
    assert torch.equal(bns[0].weight.grad, torch.zeros_like(bns[0].weight))   # ignored
    for bn in bns[1:]:
        torch.testing.assert_close(bn.weight.grad, 0.01 * torch.sign(bn.weight.data))


def test_global_pruning_gives_uneven_widths(data, trained):
    res = prune(trained, PruneConfig(ratio=0.5, global_pruning=True, **NO_FT), data)
    widths = [res.channels_after[n] / res.channels_before[n] for n in res.channels_before if n != "classifier.2"]
    assert len(set(round(w, 3) for w in widths)) > 1
    assert res.macs_after < res.macs_before


# ----------------------------------------------------------------------------------------- errors

def test_ratio_outside_unit_interval():
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(RecipeError, match=r"ratio: .*outside \(0, 1\)"):
            PruneConfig(ratio=bad)
    with pytest.raises(RecipeError, match=r"stages\[1\]\.prune\.ratio: 1\.5 is outside"):
        from_dict(PruneConfig, {"ratio": 1.5}, "stages[1].prune")


def test_config_round_trips_through_dict():
    cfg = PruneConfig(target_macs_ratio=2.0, ignore=["features.0.0"], train=TrainConfig(lr=1e-3, max_steps=5))
    assert from_dict(PruneConfig, json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_unknown_importance_suggests_the_closest():
    with pytest.raises(RecipeError, match="Did you mean 'taylor'"):
        from_dict(PruneConfig, {"importance": "taylr"}, "prune")
    with pytest.raises(RecipeError, match=r"importance: unknown pruning importance 'l3'.*Allowed: bn_scale, l1, l2"):
        PruneConfig(importance="l3")
    assert IMPORTANCES.names() == ["bn_scale", "l1", "l2", "taylor"]


def test_unknown_ignore_layer_is_named_with_suggestion(data, trained):
    with pytest.raises(RecipeError, match=r"ignore\[1\]: the model has no layer 'feature.7.0'\. "
                                          r"Did you mean 'features.7.0'\?"):
        prune(trained, PruneConfig(ignore=["features.0.0", "feature.7.0"], **NO_FT), data)


def test_ignored_layer_keeps_its_width(data, trained):
    res = prune(trained, PruneConfig(ratio=0.5, ignore=["features.6.0"], **NO_FT), data)
    assert res.channels_after["features.6.0"] == 64
    assert res.channels_after["features.7.0"] == 32


def test_channel_shuffle_is_refused_naming_the_layer():
    model = build_model(ModelConfig("torchvision:shufflenet_v2_x0_5"), 10, 3)
    with pytest.raises(EdgecnnError, match=r"ShuffleNetV2 permutes channels across groups in 'stage2.0'"):
        prune(model, PruneConfig(**NO_FT), example_input=torch.randn(1, 3, 64, 64))


def test_bn_scale_needs_batchnorm(data):
    model = build_model(ModelConfig("simple_cnn"), data.num_classes, data.input_shape[0])
    with pytest.raises(RecipeError, match="no BatchNorm layer"):
        prune(model, PruneConfig(importance="bn_scale", **NO_FT), data)


def test_finetune_without_data_is_a_clear_error():
    model = build_model(ModelConfig("bn_cnn"), 10, 1)
    with pytest.raises(EdgecnnError, match="need data"):
        prune(model, PruneConfig(finetune_epochs=1), example_input=torch.randn(1, 1, 8, 8))


def test_unreachable_macs_target(data, trained):
    with pytest.raises(EdgecnnError, match="target_macs_ratio: 50.0 cannot be reached"):
        prune(trained, PruneConfig(target_macs_ratio=50.0, **NO_FT), data)


# ----------------------------------------------------------------------------------- unstructured

@pytest.mark.parametrize("global_pruning", [False, True])
def test_unstructured_sparsity_is_reached_and_permanent(data, trained, global_pruning):
    res = prune(trained, PruneConfig(method="unstructured", ratio=0.7, global_pruning=global_pruning, **NO_FT), data)
    model = res.model
    assert not any("weight_orig" in k or "weight_mask" in k for k in model.state_dict())   # prune.remove ran
    zeros = sum(int((model.get_submodule(n).weight == 0).sum()) for n in res.sparsity)
    total = sum(model.get_submodule(n).weight.numel() for n in res.sparsity)
    assert zeros / total == pytest.approx(0.7, abs=0.01)
    if not global_pruning:
        assert all(s == pytest.approx(0.7, abs=0.01) for s in res.sparsity.values())
    assert "classifier.2" not in res.sparsity
    assert res.macs_after == res.macs_before and res.channels_after == res.channels_before
    assert res.size_gzip_after < 0.75 * res.size_gzip_before
    assert any("no faster" in n for n in res.notes)


def test_unstructured_finetune_keeps_zeros(data, trained):
    res = prune(trained, PruneConfig(method="unstructured", ratio=0.6, finetune_epochs=1, train=SHORT), data)
    assert all(s >= 0.59 for s in res.sparsity.values())
    assert res.accuracy_after["top1"] >= res.accuracy_pruned["top1"]


# ------------------------------------------------------------------------------------ sensitivity

def test_sensitivity_scan_table_plot_and_derived_ratios(tmp_path, data, trained):
    sens = sensitivity_scan(trained, data, PruneConfig(round_to=None), ratios=[0.25, 0.5, 0.75], limit=180)
    assert len(sens.rows) == len(sens.top1) * 3 == 6 * 3
    assert "| features.7.0 | 64 |" in sens.table()
    png = plot_sensitivity(sens, tmp_path / "sens.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sens.png"]   # no temp file left behind
    ratios = ratios_from_sensitivity(sens, 0.4)
    mean = sum(ratios[n] * sens.channels[n] for n in ratios) / sum(sens.channels.values())
    assert mean == pytest.approx(0.4, abs=0.01)


def test_ratios_from_sensitivity_cut_insensitive_groups_more():
    sens = SensitivityResult(90.0, [0.25, 0.5, 0.75], {"robust": 64, "fragile": 64},
                             {"robust": [90.0, 89.0, 85.0], "fragile": [80.0, 40.0, 10.0]})
    r = ratios_from_sensitivity(sens, 0.5)
    assert r["robust"] > 0.5 > r["fragile"]
    assert (r["robust"] + r["fragile"]) / 2 == pytest.approx(0.5, abs=0.01)


def test_prune_with_sensitivity_ratios(data, trained):
    cfg = PruneConfig(ratio=0.5, ratio_source="sensitivity", sensitivity_ratios=[0.3, 0.6], round_to=None,
                      target_macs_ratio=2.0, **NO_FT)
    res = prune(trained, cfg, data)
    assert res.macs_ratio >= 2.0
    assert res.sensitivity is not None and set(res.layer_ratios) == set(res.sensitivity.top1)
    assert len(set(res.layer_ratios.values())) > 1
    json.dumps(res.to_dict())


@pytest.mark.slow   # ~15 s alone, over a minute on a shared 2-core machine
def test_prune_stage_returns_stage_result(tmp_path, data, trained):
    pipeline = pytest.importorskip("edgecnn.pipeline")
    from types import SimpleNamespace

    from edgecnn.compress import prune_stage

    ctx = SimpleNamespace(model=trained, reference=lambda: trained, data=data, stage_dir=tmp_path, seed=0)
    out = prune_stage(ctx, PruneConfig(target_macs_ratio=2.0, finetune_epochs=1, compare_plain_finetune=True,
                                       ratio_source="sensitivity", sensitivity_ratios=[0.5], train=SHORT))
    assert isinstance(out, pipeline.StageResult)
    assert out.metrics["macs_ratio"] >= 2.0
    assert {"top1_after_plain_finetune", "top1_after_distill_finetune"} <= set(out.metrics)
    assert out.files["sensitivity_plot"].is_file() and out.files["prune"].is_file()


# -------------------------------------------------------------------------------- torchvision zoo

TORCHVISION = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf",
               "densenet121"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_half_pruned_exports_to_onnx(tmp_path, name):
    import onnxruntime as ort

    torch.manual_seed(0)
    channels = 1 if name == "resnet18" else 3    # one grayscale model: the adapted first conv prunes too
    model = build_model(ModelConfig(f"torchvision:{name}"), 10, channels).eval()
    x = torch.randn(1, channels, 64, 64)
    res = prune(model, PruneConfig(ratio=0.5, finetune_epochs=0), example_input=x)
    pruned = res.model.eval()
    ratio = res.macs_before / res.macs_after
    print(f"{name}: MACs {res.macs_before / 1e6:.1f}M -> {res.macs_after / 1e6:.1f}M ({ratio:.2f}x)")
    assert ratio >= 1.8
    ref = _outputs(pruned, x)
    assert ref.shape == (1, 10)

    path = save_checkpoint(tmp_path / "pruned.pt", pruned)
    restored = build_model(ModelConfig(f"torchvision:{name}", checkpoint=str(path)), 10, channels)
    assert torch.equal(_outputs(restored, x), ref)

    onnx_path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(pruned, (x,), str(onnx_path), dynamo=True, verbose=False)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == (1, 10)
    torch.testing.assert_close(torch.from_numpy(got), ref, rtol=1e-3, atol=1e-4)
