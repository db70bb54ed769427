import pytest
import torch
from torch import nn

from edgecnn.errors import CheckpointError, RecipeError
from edgecnn.models import ModelConfig, build_model, count_macs, load_checkpoint, load_weights, save_checkpoint


def factory(num_classes=10, in_channels=1):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


class NotAModule:
    pass


@pytest.mark.parametrize("source", ["bn_cnn", "simple_cnn", "builtin:bn_cnn", "torchvision:resnet18",
                                    "torchvision:mobilenet_v3_small", "timm:resnet10t",
                                    "tests.core.test_models:factory"])
def test_sources_build_with_classes_and_channels(source):
    m = build_model(ModelConfig(source=source), num_classes=7, in_channels=1).eval()
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_unknown_sources_are_clear():
    with pytest.raises(RecipeError, match="Did you mean 'bn_cnn'"):
        ModelConfig(source="bncnn")
    with pytest.raises(RecipeError, match="Did you mean 'resnet18'"):
        build_model(ModelConfig(source="torchvision:resnet81"), 10, 1)


def test_checkpoint_round_trip_and_pruned_shapes(tmp_path):
    m = build_model(ModelConfig(source="bn_cnn"), 10, 1).eval()
    # Shrink a conv's output channels as pruning would, with its BN and the next conv's input.
    f = m.features
    conv, bn, nxt = f[0][0], f[0][1], f[1][0]
    conv.weight = nn.Parameter(conv.weight[:8].clone()); conv.out_channels = 8
    for name in ("weight", "bias"):
        setattr(bn, name, nn.Parameter(getattr(bn, name)[:8].clone()))
    bn.running_mean, bn.running_var, bn.num_features = bn.running_mean[:8], bn.running_var[:8], 8
    nxt.weight = nn.Parameter(nxt.weight[:, :8].clone()); nxt.in_channels = 8
    x = torch.randn(2, 1, 28, 28)
    save_checkpoint(tmp_path / "m.pt", m)
    fresh = build_model(ModelConfig(source="bn_cnn"), 10, 1)
    load_weights(fresh, load_checkpoint(tmp_path / "m.pt"))
    assert torch.equal(fresh.eval()(x), m(x))
    assert count_macs(fresh, (1, 28, 28)) < count_macs(build_model(ModelConfig(), 10, 1), (1, 28, 28))


def test_pickled_checkpoint_is_refused_with_the_flag_named(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "obj": NotAModule()}, path)
    with pytest.raises(CheckpointError, match="allow_pickle"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_plain_state_dict_with_other_head_loads_backbone(tmp_path):
    src = build_model(ModelConfig(source="bn_cnn"), 5, 1)
    torch.save(src.state_dict(), tmp_path / "sd.pt")
    dst = build_model(ModelConfig(source="bn_cnn"), 10, 1)
    skipped = load_weights(dst, load_checkpoint(tmp_path / "sd.pt"))
    assert skipped == ["classifier.2.weight", "classifier.2.bias"]
    assert torch.equal(dst.features[0][0].weight, src.features[0][0].weight)
