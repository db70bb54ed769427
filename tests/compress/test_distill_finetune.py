"""The fine-tune after pruning: distillation against plain cross-entropy, the defaults and the report."""
from __future__ import annotations

import json

import pytest
import torch

from edgecnn.compress import DistillConfig, PruneConfig, prune
from edgecnn.data import DataConfig, load_data
from edgecnn.models import ModelConfig, build_model
from edgecnn.report.markdown import render_markdown
from edgecnn.train import TrainConfig, fit

SHORT = TrainConfig(lr=1e-3, warmup_epochs=0.0, max_steps=12)


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(source="digits"), seed=0)


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    model = build_model(ModelConfig("bn_cnn"), data.num_classes, data.input_shape[0])
    fit(model, data, TrainConfig(epochs=3), seed=0)
    return model.eval()


def test_prune_and_distill_share_the_measured_kd_defaults():
    # The recipe's prune stage and the standalone distill stage distil the same way by default.
    p, d = PruneConfig(), DistillConfig()
    assert (p.kd_temperature, p.kd_alpha) == (d.temperature, d.alpha)


def test_kd_vs_plain_is_measured_on_the_test_split_and_reported(data, trained):
    cfg = PruneConfig(target_macs_ratio=2.0, finetune_epochs=1, compare_plain_finetune=True, train=SHORT)
    res = prune(trained, cfg, data)
    cmp = res.finetune_comparison_test
    assert cmp is not None and set(cmp) == {"distill", "plain"}
    assert cmp["distill"]["n"] == cmp["plain"]["n"] == len(data.splits["test"])
    assert res.accuracy_after["n"] == len(data.splits["val"])    # the val figures stay what they were
    # The returned model is the distilled one: its test accuracy is the 'distill' entry.
    from edgecnn.train import evaluate
    assert evaluate(res.model.eval(), data, "test")["top1"] == cmp["distill"]["top1"]
    assert any(n.startswith("the same on the test split") for n in res.notes)
    json.dumps(res.to_dict())

    stage = {"name": "prune", "kind": "prune", "metrics": {
        "eval_split": "val", "top1_after_plain_finetune": res.accuracy_plain_finetune["top1"],
        "top1_after_distill_finetune": res.accuracy_distill_finetune["top1"],
        "test_top1_after_plain_finetune": cmp["plain"]["top1"],
        "test_top1_after_distill_finetune": cmp["distill"]["top1"]}}
    md = render_markdown({"recipe": {"name": "t"}, "stages": [stage]})
    assert "## Fine-tune after pruning: distillation vs plain" in md
    assert f"| prune | test | {cmp['distill']['top1']:.2f} | {cmp['plain']['top1']:.2f} |" in md
    assert "Fine-tune after pruning" not in render_markdown({"recipe": {"name": "t"}, "stages": [
        {"name": "prune", "metrics": {"top1_after": 90.0}}]})
