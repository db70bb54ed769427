"""Measure an artifact on a remote device over SSH, with the system `ssh` and `scp` binaries.

One job: the artifact's files and sidecar, the test inputs, labels and reference logits as .npy,
`agent.py` and a `job.json` are copied into a fresh folder under the target's work_dir; the agent
runs there and prints JSON; the folder is removed. The device needs Python >= 3.8, NumPy and the
runtime, nothing from edgecnn.

Every connection uses BatchMode (never prompts), StrictHostKeyChecking=yes against the target's
known_hosts file (an unknown or changed host key is an error, never silently accepted), a
ConnectTimeout, and the whole job an overall timeout. Failures raise `TargetUnavailable` (cannot
use the device) or `RuntimeMissing` / `TargetError` (the job failed there), each with the fix.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.bench import agent
from edgecnn.bench.measure import MeasureConfig, Measurement, files_size, from_agent_result
from edgecnn.bench.targets import RuntimeMissing, Target, TargetError, TargetUnavailable

__all__ = ["ssh_command", "scp_command", "probe", "measure_remote", "run_job"]

AGENT_PATH = Path(agent.__file__)


def _common_options(t: Target) -> list[str]:
    s = t.ssh
    opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"ConnectTimeout={s.connect_timeout_s}",
            "-o", "LogLevel=ERROR", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
    if s.known_hosts:
        # Only this file is trusted: the global list must not vouch for a device the profile pins.
        opts += ["-o", f"UserKnownHostsFile={s.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
    if s.identity_file:
        opts += ["-i", s.identity_file, "-o", "IdentitiesOnly=yes"]
    return opts


def ssh_command(t: Target, remote_command: str) -> list[str]:
    return ["ssh", *_common_options(t), "-p", str(t.ssh.port), t.ssh.destination, remote_command]


def scp_command(t: Target, local_dir: Path, remote_dir: str) -> list[str]:
    """Copy `local_dir` to `remote_dir` on the device (which must not exist yet)."""
    return ["scp", "-q", "-r", *_common_options(t), "-P", str(t.ssh.port), str(local_dir),
            f"{t.ssh.destination}:{remote_dir}"]


def scp_fetch_command(t: Target, remote_path: str, local_path: Path) -> list[str]:
    return ["scp", "-q", *_common_options(t), "-P", str(t.ssh.port), f"{t.ssh.destination}:{remote_path}",
            str(local_path)]


def _run(t: Target, argv: list[str], timeout: float, input: bytes | None = None,
         what: str = "ssh") -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=input, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise TargetError(t.name, f"the '{argv[0]}' client is not installed here. Install it "
                                  "(Debian/Ubuntu: apt-get install -y openssh-client).") from None
    except subprocess.TimeoutExpired:
        raise TargetUnavailable(t.name, f"{what} to {t.ssh.destination}:{t.ssh.port} did not finish within "
                                        f"{timeout:.0f} s. Check that the device is up, or raise "
                                        f"ssh.run_timeout_s in {t.source or 'the target'}.") from None


def _connection_error(t: Target, stderr: str) -> TargetError:
    """Turn ssh's exit-255 stderr into what went wrong and how to fix it."""
    s, where = t.ssh, f"{t.ssh.destination}:{t.ssh.port}"
    msg = stderr.strip().splitlines()[-1] if stderr.strip() else "ssh failed with no message"
    low = stderr.lower()
    kh = s.known_hosts or "~/.ssh/known_hosts"
    if ("host key verification failed" in low or "identification has changed" in low
            or ("no " in low and "host key is known" in low)):
        fix = (f"the host key of {where} is not in {kh} or does not match it. Check the key's fingerprint on "
               f"the device (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then add it: "
               f"ssh-keyscan -p {s.port} {s.host} >> {kh}")
    elif "permission denied" in low:
        fix = (f"login refused at {where}. Check ssh.user ({s.user or 'default'}) and ssh.identity_file "
               f"({s.identity_file or 'default keys'}), and that its public key is in the device's "
               f"~/.ssh/authorized_keys")
    elif "could not resolve" in low:
        fix = f"cannot resolve host '{s.host}'. Fix ssh.host or add it to DNS / /etc/hosts"
    else:
        fix = (f"cannot reach {where} ({msg}). Check that the device is on, on the network, and runs sshd on "
               f"port {s.port}")
    return TargetUnavailable(t.name, f"{fix}. [ssh: {msg}]")


def _ssh(t: Target, remote_command: str, timeout: float, input: bytes | None = None) -> subprocess.CompletedProcess:
    r = _run(t, ssh_command(t, remote_command), timeout, input)
    if r.returncode == 255:
        raise _connection_error(t, r.stderr.decode(errors="replace"))
    return r


def _agent_reply(t: Target, r: subprocess.CompletedProcess) -> dict[str, Any]:
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    reply = None
    for line in reversed(out.strip().splitlines()):
        try:
            reply = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    if r.returncode == 127 or (reply is None and "not found" in err):
        raise TargetError(t.name, f"'{t.ssh.python}' was not found on the device. Set ssh.python in "
                                  f"{t.source or 'the target'} to a Python >= 3.8 there. [{err.strip()[-300:]}]")
    if reply is None:
        hint = ""
        if "numpy" in err.lower() and ("modulenotfound" in err.lower() or "no module" in err.lower()):
            hint = f" NumPy is missing there: {t.ssh.python} -m pip install numpy."
        elif "syntaxerror" in err.lower():
            hint = " The device's Python is older than 3.8: set ssh.python to a newer one."
        raise TargetError(t.name, f"the agent on the device gave no result (exit {r.returncode}).{hint} "
                                  f"[{err.strip()[-500:]}]")
    if not reply.get("ok"):
        cls = RuntimeMissing if reply.get("kind") == "runtime_missing" else TargetError
        raise cls(t.name, f"on the device: {reply.get('error')}")
    return reply


def probe(t: Target) -> dict[str, Any]:
    """Run the agent's `probe` on the device (the script piped over stdin): its environment."""
    names = ",".join(t.runtimes)
    cmd = f"{shlex.quote(t.ssh.python)} - probe --runtimes {shlex.quote(names)}"
    r = _ssh(t, cmd, timeout=t.ssh.connect_timeout_s + 60, input=AGENT_PATH.read_bytes())
    return _agent_reply(t, r)["env"]


def run_job(t: Target, job_dir: Path, fetch: tuple[str, ...] = ()) -> dict[str, Any]:
    """Copy `job_dir` (agent.py, job.json and data inside) to the device, run it, return its JSON.
    Files named in `fetch` (written by the agent in its job folder) are copied back into `job_dir`."""
    s = t.ssh
    deadline = time.monotonic() + s.run_timeout_s

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TargetUnavailable(t.name, f"the job did not finish within ssh.run_timeout_s = {s.run_timeout_s} s. "
                                            f"Raise it in {t.source or 'the target'} or measure fewer images.")
        return remaining

    remote_dir = f"{s.work_dir.rstrip('/')}/job-{uuid.uuid4().hex[:12]}"
    q = shlex.quote
    _ssh(t, f"mkdir -p {q(s.work_dir)}", timeout=left())
    try:
        r = _run(t, scp_command(t, job_dir, remote_dir), timeout=left(), what="scp")
        if r.returncode != 0:
            err = r.stderr.decode(errors="replace")
            if r.returncode == 255 or "host key" in err.lower() or "connection" in err.lower():
                raise _connection_error(t, err)
            raise TargetError(t.name, f"copying the job to {s.destination}:{remote_dir} failed "
                                      f"(exit {r.returncode}): {err.strip()[-300:]}. Check that ssh.work_dir "
                                      f"'{s.work_dir}' is writable and the device has free disk space.")
        r = _ssh(t, f"cd {q(remote_dir)} && {q(s.python)} agent.py measure --job job.json", timeout=left())
        reply = _agent_reply(t, r)
        for name in fetch:
            r = _run(t, scp_fetch_command(t, f"{remote_dir}/{name}", job_dir / name), timeout=left(), what="scp")
            if r.returncode != 0:
                raise TargetError(t.name, f"fetching {name} from {s.destination}:{remote_dir} failed: "
                                          f"{r.stderr.decode(errors='replace').strip()[-300:]}")
        return reply
    finally:
        if not s.keep_files:
            try:  # best effort: a failed clean-up must not hide the job's own result or error
                _run(t, ssh_command(t, f"rm -rf {q(remote_dir)}"), timeout=s.connect_timeout_s + 30)
            except TargetError:
                pass


def measure_remote(artifact: Any, t: Target, runtime: str, x: np.ndarray, labels: np.ndarray | None,
                   reference: np.ndarray | None, config: MeasureConfig, *, name: str | None = None,
                   format: str = "", precision: str = "", return_logits: bool = False
                   ) -> tuple[Measurement, np.ndarray | None]:
    """Measure one artifact on the device of `t` through the agent; returns the row and, with
    `return_logits`, the logits the device computed. `artifact` needs `.path` (the file the runtime
    loads), `.files` (all its files) and optionally `.sidecar`."""
    if not t.remote:
        raise TargetError(t.name, f"is kind '{t.kind}', not 'ssh'")
    if runtime not in t.runtimes:
        raise RuntimeMissing(t.name, f"the artifact needs runtime '{runtime}' but the target lists only "
                                     f"{', '.join(t.runtimes)}. Install it there and add it to the target's runtimes.")
    main = Path(artifact.path)
    files = [Path(f) for f in (getattr(artifact, "files", None) or [main])]
    sidecar = Path(artifact.sidecar) if getattr(artifact, "sidecar", None) else None
    if config.limit is not None:
        x, labels = x[:config.limit], None if labels is None else labels[:config.limit]
        reference = None if reference is None else reference[:config.limit]
    with tempfile.TemporaryDirectory(prefix="edgecnn-job-") as tmp:
        job_dir = Path(tmp) / "job"
        (job_dir / "artifact").mkdir(parents=True)
        base = main.parent
        for f in {*files, main, *([sidecar] if sidecar else [])}:
            # keep paths relative to the main file: OpenVINO's .bin and ONNX external data are found by name
            rel = f.relative_to(base) if f.is_relative_to(base) else Path(f.name)
            (job_dir / "artifact" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, job_dir / "artifact" / rel)
        shutil.copy2(AGENT_PATH, job_dir / "agent.py")
        np.save(job_dir / "inputs.npy", np.ascontiguousarray(x, dtype=np.float32))
        job = {"artifact": f"artifact/{main.name}", "runtime": runtime, "threads": t.resolve_threads(),
               "inputs": "inputs.npy", "labels": None, "reference": None, "sidecar": None,
               "config": config.agent_config()}
        if sidecar:
            job["sidecar"] = f"artifact/{sidecar.relative_to(base) if sidecar.is_relative_to(base) else sidecar.name}"
        if labels is not None:
            np.save(job_dir / "labels.npy", np.asarray(labels, dtype=np.int64))
            job["labels"] = "labels.npy"
        if reference is not None:
            np.save(job_dir / "reference.npy", np.asarray(reference, dtype=np.float32))
            job["reference"] = "reference.npy"
        if return_logits:
            job["save_logits"] = "logits.npy"
        (job_dir / "job.json").write_text(json.dumps(job, indent=1))
        reply = run_job(t, job_dir, fetch=("logits.npy",) if return_logits else ())
        logits = np.load(job_dir / "logits.npy") if return_logits else None
    row = Measurement(name=name or main.name, target=t.name, runtime=runtime, format=format, precision=precision,
                      load_s=reply.get("load_s"), peak_rss_mb=reply.get("peak_rss_mb"),
                      rss_added_mb=reply.get("rss_added_mb"), size_bytes=files_size(set(files) | {main}),
                      threads=job["threads"], remote=True, env=reply.get("env", {}))
    return from_agent_result(reply["measure"], row), logits
