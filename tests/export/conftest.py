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
    fit(model, data, TrainConfig(epochs=1, max_steps=250, augment=False), seed=0)
    return model.eval().cpu()


def quantize_pt2e(model, data, calib: int = 256):
    """PT2E PTQ with litert-torch's quantizer (per-channel weights), as the quantize stage does.

    Built here rather than through edgecnn.compress.quantize so these tests pin the exporter's
    input (a convert_pt2e graph with folded int8 weights and a free batch axis) on their own.
    """
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


@pytest.fixture(scope="session")
def artifacts(float_model, quantized_model, data, tmp_path_factory):
    """Every registered format x fp32/int8, exported and verified once: {(format, precision): Artifact}."""
    from edgecnn.export import EXPORTERS, ExportConfig, export_all

    out = tmp_path_factory.mktemp("artifacts")
    arts = export_all(float_model, quantized_model, data, out,
                      ExportConfig(formats=EXPORTERS.names(), precisions=["fp32", "int8"], verify_samples=500),
                      recipe_hash="test-recipe")
    return {(a.format, a.precision): a for a in arts}
