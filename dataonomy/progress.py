"""Progress of long loops: a bar on a terminal, and without one (a log file, a batch job) a steady line on stderr
every few seconds that says how far the work is, how fast it goes and how long it has left."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

#: Seconds between progress lines when stderr is not a terminal.
LOG_EVERY = 30.0


class Counter:
    """Progress counted by hand (``update(n)``): a tqdm bar on a terminal, else a line on stderr every
    ``log_every`` seconds and one at the end. ``enabled`` False shows nothing; ``initial`` is work done before
    (a resumed job)."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "image",
        initial: int = 0,
        enabled: bool | None = None,
        log_every: float = LOG_EVERY,
    ):
        terminal = sys.stderr.isatty()
        self.total, self.desc, self.unit, self.log_every = total, desc, unit, log_every
        self.bar = tqdm(
            total=total, initial=initial, desc=desc, unit=unit, leave=False,
            disable=enabled is False or not terminal,
        )  # fmt: skip
        self.logging = enabled is not False and not terminal
        self.done = self.initial = initial
        self.started = self.logged = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        now = time.perf_counter()
        if self.logging and now - self.logged >= self.log_every:
            self.logged = now
            print(self._line(now - self.started), file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
        if self.logging and self.done > self.initial:
            seconds = time.perf_counter() - self.started
            print(
                f"{self.desc}: {self.done - self.initial} {self.unit}s in {seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )
            self.logging = False

    def _line(self, seconds: float) -> str:
        rate = (self.done - self.initial) / max(seconds, 1e-9)
        if self.total is None:
            return f"{self.desc}: {self.done} {self.unit}s, {rate:.2f} {self.unit}s/s"
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        return f"{self.desc}: {self.done}/{self.total} {self.unit}s, {rate:.2f} {self.unit}s/s, about {left:.0f} s left"


def progress(
    items: Iterable[T],
    *,
    desc: str,
    total: int | None = None,
    unit: str = "image",
    weights: Iterable[int] | None = None,
    enabled: bool | None = None,
    log_every: float = LOG_EVERY,
) -> Iterator[T]:
    """Yield ``items``, showing progress in ``unit``s: ``weights`` gives how many units each item holds (a batch
    of images), default 1. ``enabled``: None shows progress (a bar on a terminal, lines in a log), False hides it.
    An iterator without a length is not read ahead."""
    weights = None if weights is None else list(weights)
    if total is None and weights is not None:
        total = sum(weights)
    elif total is None and hasattr(items, "__len__"):
        total = len(items)
    counter = Counter(total, desc, unit, enabled=enabled, log_every=log_every)
    try:
        for i, item in enumerate(items):
            yield item
            counter.update(1 if weights is None else weights[i])
    finally:
        counter.close()


__all__ = ["LOG_EVERY", "Counter", "progress"]
