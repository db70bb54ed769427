"""User-facing errors: each names what is wrong, where, and how to fix it.

The CLI prints an `EdgecnnError` as one paragraph with no traceback; anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgecnnError(Exception):
    """An error the user can fix: bad recipe, missing file, unsupported layer."""


class RecipeError(EdgecnnError, ValueError):
    """A recipe or pass config value is invalid. `key` is the dotted path to it."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class CheckpointError(EdgecnnError):
    pass


class DataError(EdgecnnError):
    pass


class ExportError(EdgecnnError):
    pass


class RunLockedError(EdgecnnError):
    pass


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown(kind: str, value: str, choices: Iterable[str], key: str = "") -> RecipeError:
    """The standard 'unknown X' error: the bad value, every allowed value and the closest one."""
    choices = sorted(str(c) for c in choices)
    return RecipeError(key, f"unknown {kind} '{value}'.{did_you_mean(value, choices)} "
                            f"Allowed: {', '.join(choices)}.")
