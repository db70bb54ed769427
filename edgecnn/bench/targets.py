"""Targets: where an artifact runs, described as data in `targets/<name>.yaml`.

    kind: local   this machine's CPU (threads, optional pinning to CPUs)
    kind: cuda    this machine's GPU through torch / ONNX Runtime's CUDA provider
    kind: ssh     a remote device reached with the system `ssh`/`scp` (host keys verified)

`load_target(name_or_path)` looks for `<name>.yaml` in `./targets/`, then the repository's
`targets/`, then the copies packaged in `edgecnn/bench/builtin_targets/` (a link to `targets/`, copied into wheels); the first found wins, so a
project can override a shipped profile. An unknown name lists the known ones and the closest.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from edgecnn.config import check, from_dict, to_dict
from edgecnn.errors import EdgecnnError, RecipeError, did_you_mean

__all__ = ["Target", "SSHConfig", "Budgets", "TargetError", "TargetUnavailable", "RuntimeMissing",
           "load_target", "list_targets", "target_dirs", "check_target", "RUNTIMES"]

RUNTIMES = ("torch", "onnxruntime", "openvino", "litert")
_REPO_TARGETS = Path(__file__).resolve().parents[2] / "targets"
_PACKAGED_TARGETS = Path(__file__).resolve().parent / "builtin_targets"


class TargetError(EdgecnnError):
    """A target profile is missing or invalid, or measuring on it failed."""

    def __init__(self, target: str, message: str, status: str = "failed"):
        self.target = target
        self.status = status    # the row status a caller records: 'failed', or 'skipped' by design (no GPU here)
        super().__init__(f"target '{target}': {message}" if target else message)


class TargetUnavailable(TargetError):
    """The device cannot be used at all right now (unreachable, host key, login, no GPU)."""


class RuntimeMissing(TargetError):
    """The device answers but lacks the runtime an artifact needs."""


@dataclass
class SSHConfig:
    host: str                             # device host name or IP address
    port: int = 22                        # sshd port
    user: str | None = None               # login name; null: ssh's default (the local user or ~/.ssh/config)
    identity_file: str | None = None      # private key; relative paths are from the target file's folder
    known_hosts: str | None = None        # file holding the device's host key (verified, never added); null: ~/.ssh/known_hosts
    python: str = "python3"               # Python >= 3.8 with NumPy and the runtimes, on the device
    work_dir: str = "/tmp/edgecnn"        # where jobs are copied on the device (removed after each run)
    connect_timeout_s: int = 10           # ssh ConnectTimeout, seconds
    run_timeout_s: int = 900              # one whole measurement (copy, run, fetch), seconds
    keep_files: bool = False              # leave the job folder on the device (debugging)

    def __post_init__(self):
        check(bool(self.host.strip()), "host", "is empty: give the device's host name or IP address")
        check(1 <= self.port <= 65535, "port", f"{self.port} is outside 1..65535")
        check(self.connect_timeout_s >= 1, "connect_timeout_s", "must be >= 1 second")
        check(self.run_timeout_s >= 1, "run_timeout_s", "must be >= 1 second")
        check(self.work_dir.startswith("/") or self.work_dir.startswith("~"), "work_dir",
              f"'{self.work_dir}' must be an absolute path on the device")

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host


@dataclass
class Budgets:
    """Limits a report's gate checks each row against; null: no limit."""
    latency_ms: float | None = None       # batch-1 p50 latency, ms
    size_mb: float | None = None          # artifact files, MB (10^6 bytes)
    memory_mb: float | None = None        # peak resident memory of the measuring process, MiB

    def __post_init__(self):
        for k in ("latency_ms", "size_mb", "memory_mb"):
            v = getattr(self, k)
            check(v is None or v > 0, k, f"{v} must be > 0")

    def check(self, row: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """{budget: {limit, value, ok}} for each budget set, from a Measurement.to_dict() row."""
        values = {"latency_ms": (row.get("latency_ms") or {}).get("p50"), "size_mb": row.get("size_mb"),
                  "memory_mb": row.get("peak_rss_mb")}
        out = {}
        for k, limit in to_dict(self).items():
            if limit is not None:
                v = values[k]
                out[k] = {"limit": limit, "value": v, "ok": None if v is None else v <= limit}
        return out


@dataclass
class Target:
    name: str                                             # profile name (the file name without .yaml)
    kind: Literal["local", "cuda", "ssh"] = "local"
    description: str = ""
    threads: int | Literal["all"] = "all"                 # runtime intra-op threads; all: every CPU we may use
    cpus: list[int] | None = None                         # pin to these CPU ids (os.sched_setaffinity); local only
    runtimes: list[str] = field(default_factory=lambda: list(RUNTIMES))   # runtimes installed there
    ssh: SSHConfig | None = None                          # connection, for kind: ssh
    budgets: Budgets = field(default_factory=Budgets)
    source: str | None = field(default=None, compare=False)   # the file it was loaded from (set by the loader)

    def __post_init__(self):
        check(isinstance(self.threads, str) or self.threads >= 1, "threads", f"{self.threads} must be >= 1 or 'all'")
        for i, r in enumerate(self.runtimes):
            if r not in RUNTIMES:
                raise RecipeError(f"runtimes[{i}]", f"unknown runtime '{r}'.{did_you_mean(r, RUNTIMES)} "
                                                    f"Allowed: {', '.join(RUNTIMES)}.")
        check(bool(self.runtimes), "runtimes", "is empty: list the runtimes installed on the device")
        if self.kind == "ssh":
            check(self.ssh is not None, "ssh", "kind 'ssh' needs an ssh: mapping with at least host")
            check(self.cpus is None, "cpus", "pinning is for local targets; pin on the device with taskset instead")
        else:
            check(self.ssh is None, "ssh", f"only kind 'ssh' takes connection settings (this is kind '{self.kind}')")
        if self.cpus is not None:
            check(bool(self.cpus) and all(c >= 0 for c in self.cpus), "cpus",
                  f"{self.cpus}: give one or more CPU ids >= 0")
            check(self.kind == "local", "cpus", "pinning applies to kind 'local' only")
        if self.kind == "cuda":
            check(self.cpus is None, "cpus", "pinning applies to kind 'local' only")

    @property
    def remote(self) -> bool:
        return self.kind == "ssh"

    def resolve_threads(self) -> int | None:
        """Threads to give the runtime: a number, or for 'all' the CPUs we may use (None on a remote
        device: its runtime picks)."""
        if self.threads != "all":
            return int(self.threads)
        if self.remote:
            return None
        if self.cpus:
            return len(self.cpus)
        from edgecnn.bench.measure import default_threads
        return default_threads()

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def target_dirs() -> list[Path]:
    """Folders searched for `<name>.yaml`, first match wins."""
    dirs = [Path.cwd() / "targets", _REPO_TARGETS, _PACKAGED_TARGETS]
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def _available() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in target_dirs():
        for p in sorted(d.glob("*.yaml")):
            found.setdefault(p.stem, p)
    return found


def _load_file(path: Path) -> Target:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise TargetError(path.stem, f"{path} is not valid YAML ({e}).") from None
    if not isinstance(data, dict):
        raise TargetError(path.stem, f"{path} must hold a mapping of target settings, got {type(data).__name__}.")
    data.setdefault("name", path.stem)
    try:
        target = from_dict(Target, data)
    except RecipeError as e:
        raise TargetError(str(data.get("name")), f"{path}: {e}") from None
    target.source = str(path)
    if target.ssh is not None:  # key files relative to the profile, so a profile folder is portable
        for key in ("identity_file", "known_hosts"):
            v = getattr(target.ssh, key)
            if v:
                p = Path(os.path.expanduser(v))
                setattr(target.ssh, key, str(p if p.is_absolute() else (path.parent / p).resolve()))
    return target


def load_target(name_or_path: str | Path | Target) -> Target:
    """A target by name (searched in `target_dirs()`) or by a path to a YAML file."""
    if isinstance(name_or_path, Target):
        return name_or_path
    s = str(name_or_path)
    p = Path(s)
    if s.endswith((".yaml", ".yml")) or os.sep in s:
        if not p.is_file():
            raise TargetError(p.stem, f"no target file at '{p}'.")
        return _load_file(p)
    found = _available()
    if s not in found:
        names = sorted(found)
        where = ", ".join(str(d) for d in target_dirs()) or "no targets/ folder found"
        raise TargetError(s, f"unknown target.{did_you_mean(s, names)} Known: {', '.join(names) or 'none'} "
                             f"(searched {where}). Add targets/{s}.yaml or give a path to a YAML file.")
    return _load_file(found[s])


def list_targets() -> list[Target]:
    """Every target profile found, by name (an invalid file raises a TargetError naming it)."""
    return [_load_file(p) for _, p in sorted(_available().items())]


def check_target(target: str | Path | Target) -> dict[str, Any]:
    """Is the target usable? {target, kind, reachable, runtimes: {name: version or None}, error, env}."""
    t = load_target(target)
    out: dict[str, Any] = {"target": t.name, "kind": t.kind, "reachable": False, "runtimes": {},
                           "error": None, "env": {}}
    try:
        if t.kind == "ssh":
            from edgecnn.bench.remote import probe
            env = probe(t)
        else:
            from edgecnn.bench import agent
            if t.kind == "cuda":
                _require_cuda(t)
            env = agent.environment(t.runtimes, t.resolve_threads(), load=True)
            if t.kind == "cuda":
                import torch
                env["cuda"] = {"device": torch.cuda.get_device_name(0), "torch_cuda": torch.version.cuda}
    except TargetError as e:
        out["error"] = str(e)
        return out
    out["reachable"] = True
    out["env"] = env
    versions = env.get("runtimes") or {}
    out["runtimes"] = {r: (versions.get(r) or {}).get("version", "?") if versions.get(r) else None
                       for r in t.runtimes}
    missing = [r for r, v in out["runtimes"].items() if v is None]
    if missing:
        out["error"] = (f"target '{t.name}' lists runtimes {', '.join(missing)} but they are not installed "
                        f"there. Install them or remove them from {t.source or 'the target'}'s runtimes.")
    return out


def _require_cuda(t: Target) -> None:
    try:
        import torch
        ok = torch.cuda.is_available()
    except ImportError:
        ok = False
    if not ok:
        raise TargetUnavailable(t.name, "no CUDA GPU here (torch.cuda.is_available() is False). Run on a "
                                        "machine with an NVIDIA GPU and a CUDA build of torch, or drop this target.",
                                status="skipped")
