"""Progress of long CLI work (bulk upserts, migration backfills, demo loading, building test checkpoints).

One interface, three faces chosen once per task:

- stderr is a terminal: a tqdm bar (count, rate, and an ETA when the total is known);
- stderr is a file or pipe (CI, ``kubectl logs``): one JSON line every ``interval_s`` seconds, plus one when the
  task starts and one when it ends, in the service's JSON log format (:class:`~.service.logs.JsonFormatter`);
- ``--quiet``: nothing.

Library code never prints progress: it takes a :data:`ProgressCallback` ``(task, done, total)`` and the CLI
passes a :class:`ProgressBoard`, which opens one :class:`Progress` per task name.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TextIO, TypeVar

# (task name, units done so far, total units or None when unknown). Called by library code as work advances;
# ``done`` is absolute (a resumed run reports the rows its checkpoint already covers).
ProgressCallback = Callable[[str, int, int | None], None]

DEFAULT_INTERVAL_S = 10.0
LOGGER_NAME = "milvus_embed.progress"

T = TypeVar("T")


class Progress(Protocol):
    """One task's progress. ``update`` takes the absolute count; ``advance`` adds to it."""

    def update(self, done: int, total: int | None = None) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


def add_quiet_arg(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` for every subcommand that shows progress."""
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or progress log lines")


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def open_progress(task: str, total: int | None = None, *, initial: int = 0, unit: str = "rows",
                  quiet: bool = False, stream: TextIO | None = None,
                  interval_s: float = DEFAULT_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> Progress:
    """A progress reporter for ``task`` on ``stream`` (default stderr), starting at ``initial`` (a checkpoint)."""
    if quiet:
        return NullProgress()
    out = stream if stream is not None else sys.stderr
    if is_terminal(out):
        return BarProgress(task, total, initial=initial, unit=unit, stream=out)
    return LogProgress(task, total, initial=initial, unit=unit, stream=out, interval_s=interval_s, clock=clock)


def track(items: Iterable[T], progress: Progress) -> Iterator[T]:
    """Yield ``items`` unchanged, advancing ``progress`` by one per item consumed; closes it at the end."""
    try:
        for item in items:
            yield item
            progress.advance()
    finally:
        progress.close()


def _columns(stream: Any) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class NullProgress:
    """``--quiet``: counts nothing, prints nothing."""

    def update(self, done: int, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class BarProgress:
    """A tqdm bar on a terminal; with no total it shows the count and rate, no ETA."""

    def __init__(self, task: str, total: int | None, *, initial: int, unit: str, stream: TextIO) -> None:
        from tqdm import tqdm

        # A terminal that reports no size (some container ttys) would get an empty bar: fall back to 80 columns.
        width: dict[str, Any] = {"dynamic_ncols": True} if _columns(stream) else {"ncols": 80, "nrows": 24}
        self.bar = tqdm(total=total, initial=initial, desc=task, unit=f" {unit}" if unit else "it", file=stream,
                        mininterval=0.2, smoothing=0.1, leave=True, **width)
        self.done = initial

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None and total != self.bar.total:
            self.bar.total = total
        if done != self.done:
            self.bar.update(done - self.done)
            self.done = done
        elif total is not None:
            self.bar.refresh()

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def close(self) -> None:
        self.bar.close()


class LogProgress:
    """JSON progress lines (task, done, total, rate, ETA) every ``interval_s`` seconds, at start and at the end.

    The rate counts only the work done in this run, so a resumed run's checkpoint does not inflate it.
    """

    def __init__(self, task: str, total: int | None, *, initial: int, unit: str, stream: TextIO,
                 interval_s: float = DEFAULT_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        from .service.logs import JsonFormatter

        self.task, self.total, self.unit, self.stream = task, total, unit, stream
        self.initial = self.done = initial
        self.interval_s, self.clock = interval_s, clock
        self.started = self.last = clock()
        self.formatter = JsonFormatter()
        self.closed = False
        self._emit("started")

    def fields(self) -> dict[str, Any]:
        """The numbers one line carries (also what tests check)."""
        elapsed = max(self.clock() - self.started, 0.0)
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if (self.total is not None and rate > 0) else None
        return {"task": self.task, "done": self.done, "total": self.total, "unit": self.unit,
                "elapsed_s": round(elapsed, 3), "rate_per_s": round(rate, 3),
                "eta_s": round(max(eta, 0.0), 1) if eta is not None else None}

    def _emit(self, state: str) -> None:
        f = self.fields()
        of = f"/{f['total']}" if f["total"] is not None else ""
        msg = f"{self.task}: {f['done']}{of} {self.unit} ({state})"
        record = logging.LogRecord(LOGGER_NAME, logging.INFO, __file__, 0, msg, (), None)
        record.__dict__.update(f, event="progress", state=state)
        self.stream.write(self.formatter.format(record) + "\n")
        self.stream.flush()
        self.last = self.clock()

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if self.clock() - self.last >= self.interval_s:
            self._emit("running")

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit("finished")


class ProgressBoard:
    """A :data:`ProgressCallback` for library code: one reporter per task name, closed when its total is reached
    or the next task starts (migrations report op after op). Use as a context manager so an unfinished one
    (an error, an unknown total) closes too."""

    def __init__(self, *, unit: str = "rows", quiet: bool = False, stream: TextIO | None = None,
                 interval_s: float = DEFAULT_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.unit, self.quiet, self.stream, self.interval_s, self.clock = unit, quiet, stream, interval_s, clock
        self.task: str | None = None
        self.current: Progress | None = None

    def __call__(self, task: str, done: int, total: int | None) -> None:
        if task != self.task or self.current is None:
            self.close()
            self.task = task
            self.current = open_progress(task, total, initial=done, unit=self.unit, quiet=self.quiet,
                                         stream=self.stream, interval_s=self.interval_s, clock=self.clock)
        else:
            self.current.update(done, total)
        if total is not None and done >= total:  # finished: end the bar before the caller prints its result
            self.close()

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
        self.current, self.task = None, None

    def __enter__(self) -> ProgressBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
