"""The progress display: the one place, besides the CLI, that writes to the terminal.

Library code calls `progress(iterable, total, description)`; the CLI turns the display on.
Off by default, so the Python API stays silent unless asked.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

_state = {"enabled": False, "console": None}


def enable(on: bool = True) -> None:
    _state["enabled"] = on


def console():
    from rich.console import Console

    if _state["console"] is None:
        _state["console"] = Console(stderr=True, highlight=False)
    return _state["console"]


def progress(items: Iterable[T], total: int | None = None, description: str = "") -> Iterator[T]:
    if not _state["enabled"]:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console(), transient=True,
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(description, total=total, status="")
        _state["task"] = (bar, task)
        try:
            for item in items:
                yield item
                bar.advance(task)
        finally:
            _state.pop("task", None)


def status(text: str) -> None:
    """Show `text` next to the running progress bar (e.g. the current loss)."""
    t = _state.get("task")
    if t:
        t[0].update(t[1], status=text)


def log(message: str) -> None:
    """A line of progress news (stage started, skipped, done) when the display is on."""
    if _state["enabled"]:
        console().print(message)


@contextmanager
def quiet() -> Iterator[None]:
    was = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = was
