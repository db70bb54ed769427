"""Target profiles: the shipped ones load, bad ones fail with the key, the value and the fix."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from edgecnn.bench.targets import (Budgets, Target, TargetError, TargetUnavailable, check_target, list_targets,
                                   load_target)

SHIPPED = {"local-cpu": "local", "local-cpu-1t": "local", "cuda": "cuda", "raspberry-pi-4": "ssh",
           "jetson-orin-nano": "ssh", "intel-nuc": "ssh"}


@pytest.mark.parametrize("name, kind", sorted(SHIPPED.items()))
def test_shipped_targets_load(name, kind):
    t = load_target(name)
    assert t.name == name and t.kind == kind and t.source.endswith(f"{name}.yaml")
    if kind == "ssh":
        assert t.ssh.host and t.ssh.known_hosts and t.ssh.python and t.ssh.work_dir.startswith("/")
        assert t.budgets.latency_ms and t.budgets.size_mb and t.budgets.memory_mb
        assert t.resolve_threads() in (None, 4)
    else:
        assert t.resolve_threads() >= 1


def test_list_targets_has_every_shipped_profile():
    assert set(SHIPPED) <= {t.name for t in list_targets()}


def test_packaged_profiles_outside_the_repository(tmp_path, monkeypatch):
    """A wheel install has no repository: the profiles come from the packaged copy (package-data)."""
    import tomllib

    import edgecnn.bench.targets as targets
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(targets, "_REPO_TARGETS", tmp_path / "no-repo")
    assert {t.name for t in list_targets()} >= set(SHIPPED)
    assert load_target("local-cpu").source.startswith(str(targets._PACKAGED_TARGETS))
    root = Path(__file__).resolve().parents[2]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    rel = targets._PACKAGED_TARGETS.relative_to(root / "edgecnn").as_posix()
    assert f"{rel}/*.yaml" in package_data["edgecnn"]


def test_one_thread_target():
    assert load_target("local-cpu-1t").resolve_threads() == 1


def test_unknown_name_suggests_the_closest():
    with pytest.raises(TargetError) as e:
        load_target("local-cpu-1")
    msg = str(e.value)
    assert "Did you mean 'local-cpu-1t'?" in msg and "raspberry-pi-4" in msg and "targets/local-cpu-1.yaml" in msg


def write(tmp_path: Path, text: str, name: str = "dev.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, expected", [
    ("kind: ssh\n", "ssh: kind 'ssh' needs an ssh: mapping"),
    ("thread: 2\n", "thread: unknown setting for Target. Did you mean 'threads'?"),
    ("runtimes: [onnxrt]\n", "runtimes[0]: unknown runtime 'onnxrt'. Did you mean 'onnxruntime'?"),
    ("kind: ssh\nssh: {host: pi, port: 70000}\n", "ssh.port: 70000 is outside 1..65535"),
    ("kind: ssh\nssh: {host: pi, work_dir: tmp}\n", "must be an absolute path on the device"),
    ("kind: local\nssh: {host: pi}\n", "only kind 'ssh' takes connection settings"),
    ("kind: gpu\n", "kind: 'gpu' is not allowed"),
    ("threads: 0\n", "threads: 0 must be >= 1 or 'all'"),
    ("threads: most\n", "threads: 'most' is not a valid"),
    ("cpus: [-1]\n", "cpus: [-1]: give one or more CPU ids"),
    ("budgets: {latency_ms: -3}\n", "latency_ms: -3.0 must be > 0"),
    ("[1, 2]\n", "must hold a mapping"),
    ("kind: [\n", "not valid YAML"),
])
def test_invalid_profiles_name_the_file_and_key(tmp_path, text, expected):
    p = write(tmp_path, text)
    with pytest.raises(TargetError) as e:
        load_target(p)
    assert expected in str(e.value) and "dev" in str(e.value)


def test_missing_file_path():
    with pytest.raises(TargetError, match="no target file"):
        load_target("/nonexistent/dev.yaml")


def test_key_paths_are_relative_to_the_profile(tmp_path):
    p = write(tmp_path, "kind: ssh\nssh: {host: pi, identity_file: keys/id, known_hosts: ~/kh}\n")
    t = load_target(p)
    assert t.ssh.identity_file == str(tmp_path / "keys" / "id")
    assert t.ssh.known_hosts == os.path.expanduser("~/kh")
    assert t.ssh.destination == "pi" and t.resolve_threads() is None


def test_cwd_targets_override_the_repository(tmp_path, monkeypatch):
    (tmp_path / "targets").mkdir()
    write(tmp_path / "targets", "threads: 1\ndescription: mine\n", "local-cpu.yaml")
    write(tmp_path / "targets", "threads: 1\n", "my-box.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_target("local-cpu").description == "mine"
    assert load_target("my-box").kind == "local"
    assert "raspberry-pi-4" in {t.name for t in list_targets()}


def test_budgets_check():
    b = Budgets(latency_ms=2.0, size_mb=1.0)
    out = b.check({"latency_ms": {"p50": 2.5}, "size_mb": 0.3, "peak_rss_mb": 900})
    assert out == {"latency_ms": {"limit": 2.0, "value": 2.5, "ok": False},
                   "size_mb": {"limit": 1.0, "value": 0.3, "ok": True}}


def test_check_local_target_lists_runtime_versions():
    res = check_target("local-cpu")
    assert res["reachable"] and res["runtimes"]["torch"] == torch.__version__.split("+")[0]
    assert res["env"]["cpu"]["logical_cpus"] >= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the no-GPU path does not apply")
def test_cuda_target_without_gpu_is_skipped_cleanly():
    res = check_target("cuda")
    assert not res["reachable"] and "torch.cuda.is_available() is False" in res["error"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_target_with_gpu():
    res = check_target("cuda")
    assert res["reachable"] and res["env"]["cuda"]["device"]


def test_unreachable_ssh_target_check(tmp_path, closed_port):
    port = closed_port
    p = write(tmp_path, f"kind: ssh\nruntimes: [onnxruntime]\nssh: {{host: 127.0.0.1, port: {port}, "
                        f"connect_timeout_s: 3, known_hosts: {tmp_path / 'kh'}}}\n")
    res = check_target(p)
    assert not res["reachable"]
    assert f"cannot reach 127.0.0.1:{port}" in res["error"] and "Connection refused" in res["error"]


def test_target_is_data():
    t = load_target("raspberry-pi-4")
    d = t.to_dict()
    assert d["ssh"]["host"] == "raspberrypi.local" and d["budgets"]["latency_ms"] == 50
    assert isinstance(t, Target)
    assert issubclass(TargetUnavailable, TargetError)
