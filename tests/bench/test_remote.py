"""Remote devices over SSH, through a real OpenSSH server on 127.0.0.1 (the `sshd` fixture).

The loopback "device" runs the agent with this machine's Python, so its numbers must equal the
local measurement's. Skipped, with the reason, where /usr/sbin/sshd is not installed.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgecnn.bench import agent
from edgecnn.bench.measure import MeasureConfig
from edgecnn.bench.remote import ssh_command
from edgecnn.bench.runner import measure_artifact
from edgecnn.bench.targets import RuntimeMissing, TargetError, TargetUnavailable, check_target, load_target

pytestmark = pytest.mark.ssh
FAST = dict(runs=30, warmup=3, throughput_seconds=0.2)


def profile(tmp_path: Path, sshd: dict, name: str = "loopback", runtimes=("onnxruntime",), **over) -> Path:
    ssh = {k: v for k, v in sshd.items() if k != "dir"}
    ssh.update(over)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"kind": "ssh", "threads": 1, "runtimes": list(runtimes), "ssh": ssh}))
    return p


def test_ssh_command_verifies_host_keys(sshd, tmp_path):
    argv = ssh_command(load_target(profile(tmp_path, sshd)), "true")
    opts = " ".join(argv)
    assert "BatchMode=yes" in opts and "StrictHostKeyChecking=yes" in opts
    assert f"UserKnownHostsFile={sshd['known_hosts']}" in opts and "GlobalKnownHostsFile=/dev/null" in opts
    assert "ConnectTimeout=5" in opts and "accept-new" not in opts


def test_check_target_over_ssh(sshd, tmp_path):
    res = check_target(profile(tmp_path, sshd, runtimes=("onnxruntime", "openvino")))
    assert res["reachable"] and res["error"] is None, res
    assert res["runtimes"] == {"onnxruntime": agent.runtime_versions(["onnxruntime"])["onnxruntime"]["version"],
                               "openvino": agent.runtime_versions(["openvino"])["openvino"]["version"]}
    assert res["env"]["python"] == ".".join(map(str, sys.version_info[:3]))


def test_remote_measurement_equals_local(sshd, tmp_path, tiny):
    data, model, art, x, y, ref = tiny
    cfg = MeasureConfig(**FAST)
    local = measure_artifact(art, "local-cpu-1t", data, ref, cfg)
    remote = measure_artifact(art, profile(tmp_path, sshd), data, ref, cfg)
    assert remote.ok and remote.remote and remote.target == "loopback" and remote.runtime == "onnxruntime"
    assert remote.n_images == local.n_images == len(y)
    assert remote.top1 == local.top1 and remote.top5 == local.top5
    assert remote.agreement_top1 == 100.0 and remote.max_abs_diff < 1e-4
    assert remote.latency_ms["runs"] == 30 and remote.latency_ms["p50"] > 0
    assert remote.size_bytes == local.size_bytes and remote.peak_rss_mb > 0 and remote.load_s > 0
    assert remote.env["runtimes"]["onnxruntime"]["version"]
    # the job folder on the device is removed afterwards
    assert not any(Path(sshd["work_dir"]).glob("job-*"))


def test_remote_logits_come_back(sshd, tmp_path, tiny):
    from edgecnn.bench.remote import measure_remote

    data, model, art, x, y, ref = tiny
    t = load_target(profile(tmp_path, sshd))
    row, logits = measure_remote(art, t, "onnxruntime", x[:40], y[:40], ref[:40], MeasureConfig(**FAST),
                                 return_logits=True)
    assert logits.shape == (40, ref.shape[1]) and abs(logits - ref[:40]).max() < 1e-4


def test_missing_runtime_on_the_device(sshd, tmp_path, tiny):
    """A Python on the device that cannot import onnxruntime: a RuntimeMissing naming the fix."""
    data, model, art, x, y, ref = tiny
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "onnxruntime.py").write_text("raise ImportError('onnxruntime is not installed (test)')\n")
    python = tmp_path / "python-without-ort"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={hide} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    t = profile(tmp_path, sshd, python=str(python))
    with pytest.raises(RuntimeMissing) as e:
        measure_artifact(art, t, (x[:10], y[:10]), None, MeasureConfig(**FAST))
    assert "runtime 'onnxruntime' is not installed" in str(e.value) and "pip install onnxruntime" in str(e.value)
    res = check_target(t)
    assert res["reachable"] and res["runtimes"] == {"onnxruntime": None} and "not installed there" in res["error"]


def test_missing_python_on_the_device(sshd, tmp_path, tiny):
    data, model, art, x, y, ref = tiny
    t = profile(tmp_path, sshd, python="/nonexistent/python3")
    with pytest.raises(TargetError) as e:
        measure_artifact(art, t, (x[:10], y[:10]), None, MeasureConfig(**FAST))
    assert "'/nonexistent/python3' was not found on the device" in str(e.value)


def test_wrong_host_key_is_refused(sshd, tmp_path, tiny):
    """StrictHostKeyChecking: a device whose key differs from known_hosts is never talked to."""
    data, model, art, x, y, ref = tiny
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kh = tmp_path / "known_hosts"
    kt, key = (other.with_suffix(".pub")).read_text().split()[:2]
    kh.write_text(f"[127.0.0.1]:{sshd['port']} {kt} {key}\n")
    t = profile(tmp_path, sshd, known_hosts=str(kh))
    with pytest.raises(TargetUnavailable) as e:
        measure_artifact(art, t, (x[:10], y[:10]), None, MeasureConfig(**FAST))
    assert "host key" in str(e.value) and "ssh-keyscan" in str(e.value)


def test_unknown_host_key_is_refused(sshd, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    res = check_target(profile(tmp_path, sshd, known_hosts=str(empty)))
    assert not res["reachable"] and "host key" in res["error"]


def test_unreachable_device_is_a_clear_error(tmp_path, tiny, closed_port):
    """No sshd needed: nothing listens on the port."""
    data, model, art, x, y, ref = tiny
    p = tmp_path / "down.yaml"
    p.write_text(yaml.safe_dump({"kind": "ssh", "runtimes": ["onnxruntime"],
                                 "ssh": {"host": "127.0.0.1", "port": closed_port, "connect_timeout_s": 3,
                                         "known_hosts": str(tmp_path / "kh")}}))
    with pytest.raises(TargetUnavailable) as e:
        measure_artifact(art, p, (x[:10], y[:10]), None, MeasureConfig(**FAST))
    msg = str(e.value)
    assert msg.startswith("target 'down': cannot reach 127.0.0.1:") and "Connection refused" in msg


def test_agent_parses_as_python_38():
    import ast

    ast.parse(Path(agent.__file__).read_text(), feature_version=(3, 8))


def test_agent_is_self_contained():
    """The agent imports nothing from edgecnn or torch: it runs where only NumPy and a runtime exist."""
    src = Path(agent.__file__).read_text()
    assert "import edgecnn" not in src and "from edgecnn" not in src
    code = ("import sys, runpy; sys.modules['torch'] = None; sys.modules['edgecnn'] = None; "
            f"sys.argv = ['agent.py', 'probe']; runpy.run_path({str(agent.__file__)!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    assert '"ok": true' in r.stdout
