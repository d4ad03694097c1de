"""Waiting in tests for something that happens in another process (a helper module, not a test file).

:func:`poll_until` is a hang guard, not a speed check: its timeout only keeps a broken test from
waiting forever, and its failure says what never happened.
"""

from __future__ import annotations

import time
from typing import Callable

import pytest


def poll_until(done: Callable[[], object], tick: Callable[[], object] = lambda: None, timeout: float = 60.0,
               what: str | Callable[[], str] = "still waiting", interval: float = 0.02) -> None:
    """Call ``tick`` (e.g. a timer's slot the Qt event loop would call) until ``done()`` is true.

    Raises:
        pytest.fail: after ``timeout`` seconds, with ``what`` (what is still not done; a callable is
            asked at that moment, e.g. for the status line).
    """
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"hang guard, {timeout:g} s: {what() if callable(what) else what}")
        tick()
        time.sleep(interval)
