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
    """
    weights = None if weights is None else list(weights)
    if total is None and weights is not None:
        total = sum(weights)
    elif total is None and hasattr(items, "__len__"):
        total = len(items)
    terminal = sys.stderr.isatty()
    bar = tqdm(total=total, desc=desc, unit=unit, leave=False, disable=enabled is False or not terminal)
    logging = enabled is not False and not terminal
    started = logged = time.perf_counter()
    done = 0
    try:
        for i, item in enumerate(items):
            yield item
            step = 1 if weights is None else weights[i]
            done += step
            bar.update(step)
            now = time.perf_counter()
            if logging and now - logged >= log_every:
                logged = now
                print(_line(desc, done, total, unit, now - started), file=sys.stderr, flush=True)
    finally:
        bar.close()
    if logging and done:
        print(f"{desc}: {done} {unit}s in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def _line(desc: str, done: int, total: int | None, unit: str, seconds: float) -> str:
    rate = done / max(seconds, 1e-9)
    if total is None:
        return f"{desc}: {done} {unit}s, {rate:.2f} {unit}s/s"
    left = (total - done) / rate if rate > 0 else float("inf")
    return f"{desc}: {done}/{total} {unit}s, {rate:.2f} {unit}s/s, about {left:.0f} s left"


__all__ = ["LOG_EVERY", "progress"]
