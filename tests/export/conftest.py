"""Shared fixtures: mnist5k, a briefly trained bn_cnn, its PT2E int8 graph (built once per session)."""
from __future__ import annotations

import dataclasses

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


def int8_pairs_saturate() -> bool:
    """Whether this CPU's x64 int8 kernels add u8 x s8 product pairs in int16 (no VNNI): ONNX Runtime's
    (probed) and, with the same instructions, OpenVINO's. There the tests quantize weights to 7 bits
    (QuantizeConfig.weight_bits: 7), which no pair can saturate; 8-bit weights verify only where
    the kernels are exact (docs/architecture.md, "ONNX Runtime's u8s8 kernels saturate ...")."""
    from edgecnn.export.lowering import ort_u8s8_saturates

    return ort_u8s8_saturates()


def quantize_pt2e(model, data, calib: int = 256):
    """PT2E PTQ with litert-torch's quantizer (per-channel weights), as the quantize stage does.

    Built here rather than through edgecnn.compress.quantize so these tests pin the exporter's
    input (a convert_pt2e graph with folded int8 weights and a free batch axis) on their own.
    """
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    x = data.example_input(2)
    gm = torch.export.export(model.eval(), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    config = get_symmetric_quantization_config(is_per_channel=True)
    if int8_pairs_saturate():   # 7-bit weights, as QuantizeConfig(weight_bits=7) writes them
        config = dataclasses.replace(config, weight=dataclasses.replace(config.weight, quant_min=-64, quant_max=64))
    prepared = prepare_pt2e(gm, PT2EQuantizer().set_global(config))
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
