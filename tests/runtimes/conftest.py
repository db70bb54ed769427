"""A small untrained CNN exported once to every format (no training: adapters are tested on numbers, not accuracy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def small_model():
    from edgecnn.models import ModelConfig, build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(source="simple_cnn"), 10, 1).eval()


@pytest.fixture(scope="session")
def inputs():
    return np.random.default_rng(0).standard_normal((9, 1, 28, 28)).astype(np.float32)


@pytest.fixture(scope="session")
def fp32_artifacts(small_model, inputs, tmp_path_factory):
    """{format: Artifact} for every registered export format, fp32."""
    from edgecnn.export import EXPORTERS, ExportConfig, export_model

    out = tmp_path_factory.mktemp("rt")
    ex = torch.from_numpy(inputs[:1])
    return {f: export_model(f, small_model, ex, out / f"m{EXPORTERS.get(f).suffix}", ExportConfig(formats=[f]),
                            verify_inputs=inputs) for f in EXPORTERS.names()}
