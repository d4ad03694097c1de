"""Progress reporting for long work: a tqdm bar for people, plain lines for programs.

``lines`` mode prints ``PROGRESS <percent> <text>`` on stdout, one flushed line each; the
Slicer module parses these from the engine's subprocess (see docs/CONTRACTS.md).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

__all__ = ["PROGRESS_MODES", "ProgressReporter", "SILENT"]

PROGRESS_MODES = ("bar", "lines", "none")


class ProgressReporter:
    """Reports the progress of counted work in one of ``PROGRESS_MODES``.

    Example:
        >>> reporter = ProgressReporter("none")
        >>> with reporter.track("cases", total=3) as advance:
        ...     for _ in range(3):
        ...         advance()
    """

    def __init__(self, mode: str = "bar", stream: TextIO | None = None):
        if mode not in PROGRESS_MODES:
            raise ValueError(f"mode must be one of {PROGRESS_MODES}, got {mode!r}")
        self.mode = mode
        self._stream = stream

    @contextmanager
    def track(self, description: str, total: int, unit: str = "it") -> Iterator[Callable[..., None]]:
        """Yield ``advance(n=1, total=None, **postfix)`` that moves the work ``n`` steps, changes the
        total if given (work whose length is known only once it runs) and shows ``postfix``."""
        if self.mode == "bar":
            from tqdm import tqdm

            with tqdm(total=total, desc=description, unit=unit, file=self._stream or sys.stderr, leave=False,
                      dynamic_ncols=True) as bar:

                def advance_bar(n: int = 1, total: int | None = None, **postfix: object) -> None:
                    if total is not None:
                        bar.total = total
                    if postfix:
                        bar.set_postfix({k: _short(v) for k, v in postfix.items()}, refresh=False)
                    bar.update(n)

                yield advance_bar
            return
        count = {"done": 0, "total": total, "last_percent": -1.0}

        def advance_lines(n: int = 1, total: int | None = None, **postfix: object) -> None:
            count["done"] += n
            if total is not None:
                count["total"] = total
            if self.mode != "lines":
                return
            done, total = count["done"], count["total"]
            percent = 100.0 * done / max(total, 1)
            if percent - count["last_percent"] >= 1.0 or done >= total:
                count["last_percent"] = percent
                extra = " ".join(f"{k}={_short(v)}" for k, v in postfix.items())
                self.emit_line(percent, f"{description} {done}/{total} {extra}".rstrip())

        yield advance_lines

    def emit_line(self, percent: float, text: str) -> None:
        """``lines`` mode: print ``PROGRESS <percent> <text>`` (a subclass may send it elsewhere)."""
        stream = self._stream or sys.stdout
        stream.write(f"PROGRESS {percent:.1f} {text}\n")
        stream.flush()


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


#: A reporter that shows nothing (API default).
SILENT = ProgressReporter("none")
