"""Distillation: the student learns from the teacher(s); the plain fine-tune baseline; config errors."""
from __future__ import annotations

import json

import pytest
import torch

from edgecnn.compress import DistillConfig, distill, finetune
from edgecnn.compress.distill import kd_loss
from edgecnn.config import from_dict
from edgecnn.data import DataConfig, load_data
from edgecnn.errors import EdgecnnError, RecipeError
from edgecnn.models import ModelConfig, build_model
from edgecnn.train import TrainConfig, fit


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(source="digits"), seed=0)


def _model(data, width=16, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig("bn_cnn", options={"width": width}), data.num_classes, data.input_shape[0])


@pytest.fixture(scope="module")
def teachers(data):
    out = []
    for seed in (0, 1):
        t = _model(data, seed=seed)
        fit(t, data, TrainConfig(epochs=3), seed=seed)
        out.append(t.eval())
    return out


CFG = DistillConfig(train=TrainConfig(epochs=3, lr=3e-3))


def test_student_learns_from_teacher_and_loss_falls(data, teachers):
    student = _model(data, width=8, seed=5)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    res = distill(student, teachers[0], data, CFG)
    assert res.method == "distill"
    assert res.accuracy_after["top1"] > res.accuracy_before["top1"] + 30
    losses = [h["train_loss"] for h in res.fit.history]
    assert losses[-1] < losses[0]
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())   # input untouched
    assert res.teacher_accuracy["top1"] > 80
    json.dumps(res.to_dict())


def test_ensemble_teacher_averages_logits(data, teachers):
    res = distill(_model(data, width=8, seed=5), teachers, data, CFG)
    assert res.accuracy_after["top1"] > res.accuracy_before["top1"] + 30
    x = data.example_input(4)
    with torch.no_grad():
        mean = (teachers[0](x) + teachers[1](x)) / 2
    assert res.teacher_accuracy["n"] == len(data.splits["val"])
    assert mean.shape == (4, data.num_classes)


def test_feature_hints_train_an_adapter_and_leave_no_trace(data, teachers):
    student = _model(data, width=8, seed=5)
    keys = set(student.state_dict())
    cfg = DistillConfig(train=TrainConfig(epochs=1, max_steps=10), features={"features.7": "features.7"},
                        feature_weight=0.5)
    res = distill(student, teachers[0], data, cfg)
    assert set(res.model.state_dict()) == keys           # the 32 -> 64 channel adapter was removed
    assert not any("hint" in n for n, _ in res.model.named_modules())
    assert torch.isfinite(torch.tensor(res.fit.history[0]["train_loss"]))


def test_unknown_hint_layer_is_named(data, teachers):
    cfg = DistillConfig(train=TrainConfig(epochs=1, max_steps=2), features={"features.7": "feature.7"})
    with pytest.raises(EdgecnnError, match="the teacher has no layer 'feature.7'. Did you mean 'features.7'"):
        distill(_model(data, width=8), teachers[0], data, cfg)


def test_plain_finetune_baseline(data):
    student = _model(data, width=8, seed=5)
    res = finetune(student, data, TrainConfig(epochs=2))
    assert res.method == "plain" and res.teacher_accuracy is None
    assert res.accuracy_after["top1"] > res.accuracy_before["top1"] + 30


def test_kd_loss_terms():
    s = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    assert kd_loss(s, s, y, temperature=4.0, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)
    ce = torch.nn.functional.cross_entropy(s, y)
    assert kd_loss(s, torch.randn(8, 10), y, 4.0, alpha=0.0).item() == pytest.approx(ce.item(), rel=1e-5)
    assert kd_loss(s, s.flip(1), y, 4.0, alpha=1.0) > 0


def test_config_validation_and_nested_train():
    cfg = from_dict(DistillConfig, {"temperature": 2, "train": {"epochs": 1, "lr": "1e-3"},
                                    "features": {"features.7": "features.7"}}, "stages[2].distill")
    assert cfg.train.epochs == 1 and cfg.train.lr == 1e-3 and cfg.temperature == 2.0
    with pytest.raises(RecipeError, match=r"alpha: 1.5 is outside \[0, 1\]"):
        DistillConfig(alpha=1.5)
    with pytest.raises(RecipeError, match="stages\\[2\\].distill.temprature: unknown setting.*Did you mean 'temperature'"):
        from_dict(DistillConfig, {"temprature": 2}, "stages[2].distill")


def test_distill_stage_returns_stage_result(tmp_path, data, teachers):
    pipeline = pytest.importorskip("edgecnn.pipeline")
    from types import SimpleNamespace

    from edgecnn.compress import distill_stage

    ctx = SimpleNamespace(model=_model(data, width=8), reference=lambda: teachers[0], data=data,
                          stage_dir=tmp_path, seed=0)
    out = distill_stage(ctx, DistillConfig(train=TrainConfig(epochs=1, max_steps=10)))
    assert isinstance(out, pipeline.StageResult)
    assert out.metrics["teacher_top1"] > 80
