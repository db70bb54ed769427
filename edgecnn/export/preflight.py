"""Pre-flight (placeholder)."""
from __future__ import annotations
class CheckReport: ...
def check_model(*a, **k): raise NotImplementedError
