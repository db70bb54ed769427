import torch
from torch import nn

from edgecnn.models import ModelConfig, build_model
from edgecnn.train import TrainConfig, evaluate, fit, recalibrate_batch_norm


def test_fit_learns_digits_and_keeps_the_best_epoch(digits):
    torch.manual_seed(0)
    model = build_model(ModelConfig(source="bn_cnn", options={"width": 8}), 10, 1)
    result = fit(model, digits, TrainConfig(epochs=3, batch_size=32))
    assert result.epochs_run == 3 and len(result.history) == 3
    assert result.best_val_top1 == max(h["val_top1"] for h in result.history)
    assert evaluate(model, digits, "val")["top1"] == result.best_val_top1   # best epoch restored
    assert evaluate(model, digits, "test")["top1"] > 70   # chance is 10


def test_slow_batch_norm_statistics_are_recalibrated(digits):
    """torchvision's MobileNetV3 uses BN momentum 0.01: without recalibration eval
    mode sees stale statistics and a well-trained model scores at chance."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(source="bn_cnn", options={"width": 8}), 10, 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.001
    fit(model, digits, TrainConfig(epochs=3, batch_size=32))
    assert evaluate(model, digits, "test")["top1"] > 70   # chance is 10
    assert all(m.momentum == 0.001 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # Recalibration averages the batch statistics: the running mean equals the data's channel mean.
    bn = model.features[0][1]
    recalibrate_batch_norm(model, digits, batches=1000, batch_size=10_000)
    x = torch.cat([x for x, _ in digits.batches("train", 10_000)])
    with torch.no_grad():
        pre = model.features[0][0](x)
    assert torch.allclose(bn.running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-4)
