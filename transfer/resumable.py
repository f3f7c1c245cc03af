"""What lets a training run stop at any step and go on from there: a signal becomes a flag checked between
steps (:class:`StopRequest`), the run saves its checkpoint and says so (:class:`TrainingInterrupted`, with the
shell's exit code), and the data order resumes part-way through an epoch (:class:`ResumableSampler`).
:mod:`transfer.training`'s loop uses them; they hold no training logic of their own."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DistributedSampler


class TrainingInterrupted(Exception):
    """Raised after an interrupted run saved its checkpoint; the CLI exits ``exit_code``, 128 + the signal's
    number as a shell reports it (130 for Ctrl-C, 143 for SIGTERM from a scheduler or ``kill``)."""

    def __init__(self, checkpoint: Path, step: int, rank: int = 0, signum: int = signal.SIGINT):
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}; checkpoint saved to {checkpoint} (continue with --resume)")
        self.checkpoint, self.step, self.rank = checkpoint, step, rank
        self.exit_code = 128 + int(signum)


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start part-way through an epoch (after ``start`` of its samples), with an
    optional fixed epoch length.

    ``epoch_samples`` (per process) makes every epoch that long whatever the dataset's size: shorter than the
    dataset, an epoch is the first part of a fresh seeded permutation; longer, it chains fresh permutations, and
    the ``r``-th pass over sample ``i`` is yielded as ``i + r * len(dataset)`` so that
    :class:`transfer.data.SeededTransform` gives it its own augmentation. The order is a function of (seed, epoch).
    """

    start = 0

    def __init__(self, dataset, *, epoch_samples: int | None = None, **kwargs):
        super().__init__(dataset, **kwargs)
        self.epoch_samples = epoch_samples
        if epoch_samples is not None:
            self.num_samples = epoch_samples
            self.total_size = epoch_samples * self.num_replicas

    def _fixed_length_indices(self) -> list[int]:
        n = len(self.dataset)
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        passes = -(-self.total_size // n)
        order = torch.cat([torch.randperm(n, generator=generator) + r * n for r in range(passes)])
        return order[: self.total_size][self.rank :: self.num_replicas].tolist()

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__()) if self.epoch_samples is None else self._fixed_length_indices()
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


class StopRequest:
    """Turn SIGINT/SIGTERM into a flag checked between steps, so a checkpoint is only written in a consistent
    state. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGINT  # the signal that asked (another process's, under DDP: Ctrl-C's)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def ignore_sigint(_worker_id: int) -> None:
    # Loader workers share the terminal's process group; the main process alone decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


__all__ = ["ResumableSampler", "StopRequest", "TrainingInterrupted", "ignore_sigint"]
