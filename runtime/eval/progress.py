"""Showing long work: a one-line progress bar on stderr (count, rate and time left; redrawn in place on a
terminal, a line every ten seconds otherwise, so logs stay short), and timed steps on stdout."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

LOG_INTERVAL_S = 10.0


class Progress:
    def __init__(self, total: int, done: int = 0, label: str = "", stream: TextIO | None = None, enabled: bool = True):
        self.total, self.done, self.label = total, done, label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        self.start_done = done
        self.start = time.monotonic()
        self.last_log = 0.0
        self.tty = getattr(self.stream, "isatty", lambda: False)()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * self.done / self.total)
        eta = f"{int(left // 60)}:{int(left % 60):02d}" if left == left else "?"
        return f"{self.label} {self.done}/{self.total} [{'#' * filled}{'.' * (width - filled)}] {rate:.2f}/s, {eta} left"

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + self.line())
        elif now - self.last_log >= LOG_INTERVAL_S or self.done == self.total:
            self.stream.write(self.line() + "\n")
            self.last_log = now
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


class Steps:
    """Prints `name  details  seconds` for each step of a long job as it ends (build.py, python -m quant):

        step = Steps()
        with step("export decoder") as info:
            ...
            info("1.2 GB, 22 layers")
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.start = time.perf_counter()
        self.stream = stream

    @contextmanager
    def __call__(self, name: str) -> Iterator[Callable[[str], None]]:
        out = self.stream if self.stream is not None else sys.stdout
        details: list[str] = []
        print(f"  {name:<15}", end="", flush=True, file=out)
        begin = time.perf_counter()
        try:
            yield details.append
        except BaseException:
            print(f"failed after {time.perf_counter() - begin:.1f} s", flush=True, file=out)
            raise
        print(f"{'; '.join(details):<58} {time.perf_counter() - begin:6.1f} s", flush=True, file=out)

    def total(self) -> float:
        return time.perf_counter() - self.start
