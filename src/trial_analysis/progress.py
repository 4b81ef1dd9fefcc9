"""Progress of long steps: counts and an ETA in the log, a tqdm bar in an interactive terminal.

The imputation chains, the model fits and the simulation-study replicates can each run for
minutes on a registry extract. :class:`Progress` counts finished tasks and

* writes ``<what>: k/n (p%), elapsed, ETA`` to the step's log (the ``trial_analysis``
  logger, INFO) after the first task, at every tenth of the work and at least every
  ``every_s`` seconds, and a closing ``<what>: n/n done in ...`` line;
* draws a tqdm bar on standard error instead of the interim lines when standard error is a
  terminal, unless ``CI`` is set (any value but ``""``, ``0``, ``false``, ``no``) or
  ``TRIAL_ANALYSIS_PROGRESS=0``: under Snakemake (output sent to a log file) and in CI there
  is no bar.

Progress only observes: results, their order and every output file are the same with or
without it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Any, TypeVar

Item = TypeVar("Item")
log = logging.getLogger("trial_analysis.progress")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no")


def bar_wanted(stream: IO[str] | None = None) -> bool:
    """Whether to draw a bar on ``stream`` (default standard error)."""
    stream = sys.stderr if stream is None else stream
    if _truthy(os.environ.get("CI")) or os.environ.get("TRIAL_ANALYSIS_PROGRESS") == "0":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


class Progress:
    """Counts finished tasks of one long step; see the module docstring for what it shows.

    Parameters
    ----------
    what : str
        What is counted, as the log names it ("imputation chains").
    total : int
        Number of tasks.
    every_s : float
        Longest interval between two log lines while tasks finish.
    stream : file, optional
        Where a bar would go (default standard error).
    clock : callable
        Seconds, monotonic (tests give a fake one).
    """

    def __init__(self, what: str, total: int, *, every_s: float = 30.0,
                 stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.total, self.every_s, self.clock = what, int(total), every_s, clock
        self.done = 0
        self.started = clock()
        self._last_logged = self.started
        self._last_tenth = 0
        self._bar: Any = None
        if bar_wanted(stream) and self.total > 1:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=what, file=stream or sys.stderr,
                             leave=False, dynamic_ncols=True)

    def eta(self) -> float:
        """Seconds still to go at the mean rate so far (inf before the first task)."""
        if self.done == 0:
            return math.inf
        elapsed = self.clock() - self.started
        return elapsed / self.done * (self.total - self.done)

    def message(self) -> str:
        """The log line for the current count."""
        elapsed = self.clock() - self.started
        share = 100 * self.done / self.total if self.total else 100.0
        return (f"{self.what}: {self.done}/{self.total} ({share:.0f}%), "
                f"{_duration(elapsed)} elapsed, ETA {_duration(self.eta())}")

    def update(self, n: int = 1) -> None:
        """``n`` more tasks finished."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if self.done >= self.total:
            return  # close() says it
        now = self.clock()
        tenth = int(10 * self.done / self.total) if self.total else 10
        if self.done == n or tenth > self._last_tenth or now - self._last_logged >= self.every_s:
            log.info(self.message())
            self._last_logged, self._last_tenth = now, tenth

    def close(self) -> None:
        """Remove the bar and log the closing line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        log.info("%s: %d/%d done in %s", self.what, self.done, self.total,
                 _duration(self.clock() - self.started))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()  # a failing step says why, not how far it got
            self._bar = None


def track(items: Iterable[Item], what: str, total: int | None = None,
          **options: Any) -> Iterator[Item]:
    """Yield ``items`` unchanged, counting each one as finished once the caller asks for the
    next (so a task is counted when its work is done)."""
    if total is None:
        total = len(items)  # type: ignore[arg-type]
    with Progress(what, total, **options) as progress:
        for item in items:
            yield item
            progress.update()
