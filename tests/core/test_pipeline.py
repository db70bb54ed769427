"""The run directory: skip unchanged stages, resume after a kill, one process at a time, clean errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edgecnn.errors import RecipeError, RunLockedError
from edgecnn.pipeline import Pipeline, run_lock
from edgecnn.recipe import load_recipe

TINY = {
    "name": "tiny",
    "data": {"source": "digits"},
    "model": {"source": "simple_cnn", "options": {"width": 8}},
    "stages": [{"train": {"epochs": 2, "batch_size": 64}}],
    "export": {"formats": ["onnx"], "precisions": ["fp32"], "verify_samples": 100},
    "targets": ["local-cpu"],
    "bench": {"runs": 10, "warmup": 2, "limit": 100, "throughput_seconds": 0.2},
    "report": {"formats": ["json", "md"]},
}


def write_recipe(tmp_path: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(recipe))
    return p


def cli(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "edgecnn.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, **kw)


def test_rerun_skips_finished_stages_and_force_reruns(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, TINY))
    first = Pipeline(recipe, tmp_path / "runs" / "tiny").run()
    assert first.ran == ["train", "export", "verify"] and not first.skipped
    manifest = json.loads((tmp_path / "runs/tiny/manifest.json").read_text())
    assert manifest["stages"]["train"]["outputs"]["model"]["sha256"]
    second = Pipeline(recipe, tmp_path / "runs" / "tiny").run()
    assert second.ran == [] and second.skipped == ["train", "export", "verify"]
    assert second.seconds < 0.5 * first.seconds
    # A changed stage setting re-runs that stage and everything after it, not before.
    changed = load_recipe(write_recipe(tmp_path, {**TINY, "bench": {**TINY["bench"], "runs": 12}}))
    third = Pipeline(changed, tmp_path / "runs" / "tiny").run()
    assert third.skipped == ["train", "export"] and third.ran == ["verify"]
    # A damaged output is noticed and its stage re-runs.
    (tmp_path / "runs/tiny/train/model.pt").write_bytes(b"broken")
    fourth = Pipeline(changed, tmp_path / "runs" / "tiny").run()
    assert fourth.ran[0] == "train"
    m = json.loads((tmp_path / "runs/tiny/manifest.json").read_text())
    # Each stage records the sha256 of what it consumed: the export used this train's checkpoint.
    assert m["stages"]["export"]["inputs"]["model"] == m["stages"]["train"]["outputs"]["model"]["sha256"]
    forced = Pipeline(changed, tmp_path / "runs" / "tiny", force=True).run(until="train")
    assert forced.ran == ["train"]


def test_second_process_on_same_run_dir_is_refused(tmp_path):
    run_dir = tmp_path / "runs" / "x"
    with run_lock(run_dir):
        code = ("from edgecnn.pipeline import run_lock; from pathlib import Path\n"
                f"with run_lock(Path({str(run_dir)!r})): pass")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        assert out.returncode != 0 and "is in use by pid" in out.stderr
        with pytest.raises(RunLockedError):
            with run_lock(run_dir):
                pass  # flock is per open file description: a second open in one process conflicts too


@pytest.mark.parametrize("bad, where", [
    ({"stages": [{"train": {"epoch": 3}}]}, "stages[0].train.epoch: unknown setting for TrainConfig. Did you mean 'epochs'?"),
    ({"stages": [{"trian": {}}]}, "unknown stage 'trian'. Did you mean 'train'?"),
    ({"model": {"source": "torchvision:resnet81"}}, None),
    ({"data": {"source": "mnist"}}, "data.source: unknown data source 'mnist'. Did you mean 'mnist5k'?"),
    ({"export": {"precisions": ["int8"]}}, "int8 artifacts come from a quantize stage"),
    ({"targets": ["local-cpu", "locl-cpu"]}, None),
])
def test_bad_recipes_fail_before_anything_runs(tmp_path, bad, where):
    path = write_recipe(tmp_path, {**TINY, **bad})
    r = cli("run", str(path), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "error:" in r.stderr
    if where:
        assert where in " ".join(r.stderr.split()), r.stderr
    assert not (tmp_path / "runs" / "tiny" / "train").exists()


def test_malformed_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nstages:\n  - train: {epochs: 2\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: not valid YAML at line \d+"):
        load_recipe(p)


def test_missing_or_pickled_checkpoint_is_one_paragraph(tmp_path):
    import argparse

    import torch

    # Any non-tensor object needs pickle to load: refused without allow_pickle.
    torch.save({"state_dict": {}, "x": argparse.Namespace(a=1)}, tmp_path / "evil.pt")
    for ckpt, needle in [("missing.pt", "does not exist"), ("evil.pt", "allow_pickle")]:
        path = write_recipe(tmp_path, {**TINY, "model": {**TINY["model"], "checkpoint": str(tmp_path / ckpt)}})
        r = cli("run", str(path), cwd=tmp_path)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
        assert not list((tmp_path / "runs").rglob("*.pt"))


@pytest.mark.slow
def test_sigkill_during_training_resumes(tmp_path):
    slow = {**TINY, "stages": [{"train": {"epochs": 30, "batch_size": 16}}]}
    path = write_recipe(tmp_path, slow)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "edgecnn.cli", "run", str(path)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    lock = tmp_path / "runs/tiny/.lock"
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text().startswith("pid")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # inside the train stage
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "runs/tiny/manifest.json").exists() or \
        "train" not in json.loads((tmp_path / "runs/tiny/manifest.json").read_text())["stages"]
    r = cli("run", str(path), cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "runs/tiny/manifest.json").read_text())
    assert set(m["stages"]) == {"train", "export", "verify"}
    assert not list((tmp_path / "runs/tiny").rglob("*.tmp"))
