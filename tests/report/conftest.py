import copy
import json

import pytest
from fake_run import make_run


@pytest.fixture
def fake_run(tmp_path):
    """(run_dir, manifest) of a realistic finished run: train, prune, quantize, export, verify."""
    run_dir = tmp_path / "runs" / "fake"
    manifest = make_run(run_dir)
    return run_dir, copy.deepcopy(manifest)


@pytest.fixture
def fake_report(fake_run):
    from edgecnn.report import build_report

    run_dir, manifest = fake_run
    return build_report(manifest, run_dir)


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path
