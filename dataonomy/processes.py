"""This process's place in a job that ``torchrun`` may have started: rank, world size, device, and the
few collectives the project needs (sums, flags, gathers).

The shared layer: feature extraction (:mod:`dataonomy.features`, shards of one cache) and training
(:mod:`transfer.training`, DDP) both read the job from here, so a new launcher or backend is one change.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from dataonomy.devices import resolve_device
from dataonomy.errors import DataonomyError


@dataclass
class Processes:
    """This process's place in a (possibly single-process) job, as torchrun's environment describes it."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @classmethod
    def from_env(cls, device: str | torch.device | None, timeout: timedelta | None = None) -> Processes:
        """Read torchrun's environment; join (and own) a process group when there are several processes and
        none exists yet: NCCL on CUDA, gloo otherwise. ``timeout``: how long a collective waits for a slow
        process (torch's default when None)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device)  # cuda without an index: this rank's GPU
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        owns_group = False
        if world_size > 1 and not dist.is_initialized():
            kwargs = {} if timeout is None else {"timeout": timeout}
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", **kwargs)
            owns_group = True
        return cls(rank, world_size, local_rank, dev, owns_group)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over processes, as a new float64 tensor on this device (``values`` is left as it is)."""
        values = values.detach().to(self.device, torch.float64, copy=True)
        if self.distributed:
            if (
                dist.get_backend() == "nccl" and values.device.type != "cuda"
            ):  # NCCL reduces CUDA tensors only
                wire = values.cuda()
                dist.all_reduce(wire)
                return wire.to(values.device)
            dist.all_reduce(values)
        return values

    def any(self, flag: bool) -> bool:
        return bool(self.sum(torch.tensor([float(flag)])).item() > 0)

    def all_ok(self, ok: bool) -> bool:
        """True when every process passes ``ok=True`` (a barrier that also carries failures)."""
        return not self.any(not ok)

    def run_everywhere(self, step: Callable[[], Any], only_main: bool, failed_elsewhere: str):
        """Run ``step`` (on the main process only if asked), then agree on whether it worked everywhere: this
        process's own error is raised, another's as ``DataonomyError(failed_elsewhere)``."""
        result, error = None, None
        try:
            if not only_main or self.main:
                result = step()
        except BaseException as exc:  # re-raised below, after the other processes have heard of it
            error = exc
        ok = self.all_ok(error is None)
        if error is not None:
            raise error
        if not ok:
            raise DataonomyError(failed_elsewhere)
        return result

    def gather(self, obj):
        """A list with every process's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
