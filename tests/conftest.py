import os

import pytest
import torch

# Two cores: keep torch from oversubscribing when tests run beside each other.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def mnist():
    from edgecnn.data import DataConfig, load_data
    return load_data(DataConfig(source="mnist5k"), seed=0)


@pytest.fixture(scope="session")
def digits():
    from edgecnn.data import DataConfig, load_data
    return load_data(DataConfig(source="digits"), seed=0)
