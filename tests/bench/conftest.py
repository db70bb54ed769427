"""Shared fixtures: a small model on `digits` (8x8), its fp32 ONNX artifact, and a real loopback sshd."""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SSHD = Path("/usr/sbin/sshd")
SSHD_MISSING = ("/usr/sbin/sshd not found: the SSH target tests need a local OpenSSH server "
                "(Debian/Ubuntu: apt-get install -y openssh-server openssh-client)")


@pytest.fixture(scope="session")
def tiny(digits, tmp_path_factory):
    """(data, model, onnx Artifact, x, labels, reference logits) for the digits test split."""
    from edgecnn.bench.runner import reference_logits
    from edgecnn.export import ExportConfig, export_all
    from edgecnn.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(source="simple_cnn"), digits.num_classes, digits.input_shape[0]).eval()
    out = tmp_path_factory.mktemp("artifacts")
    arts = export_all(model, None, digits, out, ExportConfig(formats=["onnx"], precisions=["fp32"],
                                                             verify_samples=32))
    x, y = digits.tensors("test")
    x, y = x.numpy(), y.numpy()
    return digits, model, arts[0], x, y, reference_logits(model, x)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (just freed)."""
    return free_port()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1:<free port> that accepts one client key, and a known_hosts
    file that pins its host key. Yields a dict of what a target needs."""
    if not SSHD.exists():
        pytest.skip(SSHD_MISSING)
    for tool in ("ssh", "scp", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"'{tool}' not found: apt-get install -y openssh-client")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    port = free_port()
    sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                             "/usr/libexec/sftp-server") if Path(p).exists()), None)
    config = d / "sshd_config"
    config.write_text("\n".join([
        f"HostKey {d / 'host_key'}", f"AuthorizedKeysFile {d / 'client_key.pub'}", f"PidFile {d / 'sshd.pid'}",
        "ListenAddress 127.0.0.1", "StrictModes no", "UsePAM no", "PermitRootLogin yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        *([f"Subsystem sftp {sftp}"] if sftp else []), ""]))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)   # sshd's privilege separation directory, needed as root
    log = open(d / "sshd.log", "wb")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config), "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {(d / 'sshd.log').read_text()[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip("sshd did not open its port within 15 s")
    pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    info = {"host": "127.0.0.1", "port": port, "user": getpass.getuser(), "identity_file": str(d / "client_key"),
            "known_hosts": str(d / "known_hosts"), "python": sys.executable, "work_dir": str(d / "work"),
            "connect_timeout_s": 5, "run_timeout_s": 300, "dir": d}
    yield info
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def tiny_artifacts(tiny, tmp_path_factory):
    """The tiny model as fp32 ONNX and OpenVINO IR (TFLite when its exporter can write it)."""
    from edgecnn.errors import ExportError
    from edgecnn.export import ExportConfig, export_all

    data, model = tiny[0], tiny[1]
    out = tmp_path_factory.mktemp("artifacts_all")
    arts = export_all(model, None, data, out, ExportConfig(formats=["onnx", "openvino"], precisions=["fp32"],
                                                           verify_samples=32))
    try:
        arts += export_all(model, None, data, out, ExportConfig(formats=["tflite"], precisions=["fp32"],
                                                                verify_samples=32))
    except (ExportError, NotImplementedError):
        pass   # the TFLite exporter is optional here; its agent adapter is then untested
    return {a.format: a for a in arts}
