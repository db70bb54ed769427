"""This machine's environment for reports: CPU model and flags, Python, NumPy, runtime versions."""
from __future__ import annotations

from typing import Any

from edgecnn.bench import agent


def environment() -> dict[str, Any]:
    """{hostname, platform, python, numpy, cpu {model, flags, avx512_vnni, amx, ...}, runtimes}."""
    env = agent.environment()
    env.pop("threads", None)
    return env
