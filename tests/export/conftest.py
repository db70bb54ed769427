"""Shared fixtures: mnist5k, a briefly trained bn_cnn, its PT2E int8 graph (built once per session)."""
from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def data():
    from edgecnn.data import DataConfig, load_data
    return load_data(DataConfig(), seed=0)


@pytest.fixture(scope="session")
def float_model(data):
    from edgecnn.models import ModelConfig, build_model
    from edgecnn.train import TrainConfig, fit

    torch.manual_seed(0)
    model = build_model(ModelConfig(source="bn_cnn"), data.num_classes, data.input_shape[0])
    fit(model, data, TrainConfig(epochs=1, max_steps=80, augment=False), seed=0)
    return model.eval().cpu()


def quantize_pt2e(model, data, calib: int = 256):
    """PT2E PTQ with litert-torch's quantizer (per-channel weights), as the quantize stage does."""
    try:   # the project's own pass, once it exists
        from edgecnn.compress import quantize as q
        if hasattr(q, "quantize_ptq"):
            return q.quantize_ptq(model, data)
    except ImportError:
        pass
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    x = data.example_input(2)
    gm = torch.export.export(model.eval(), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    prepared = prepare_pt2e(gm, PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
    with torch.no_grad():
        for xb, _ in data.batches("calibration", 64, limit=calib):
            prepared(xb)
    return convert_pt2e(prepared)


@pytest.fixture(scope="session")
def quantized_model(float_model, data):
    return quantize_pt2e(float_model, data)


@pytest.fixture(scope="session")
def test_images(data):
    x, y = data.tensors("test", 500)
    return x.numpy(), y.numpy()
