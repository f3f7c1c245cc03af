"""Which device a command runs on: one rule for every ``--device`` option (``auto``, ``cpu``, ``cuda``, ``cuda:N``).

The shared layer: curation (:mod:`dataonomy`) and training (:mod:`transfer`) both resolve devices here, so
``--device cuda:1`` means the same GPU in feature extraction, affinity, AHP, training and evaluation.
"""

from __future__ import annotations

import os

import torch

from dataonomy.errors import DataonomyError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` -> this process's GPU where there is one (``cuda:$LOCAL_RANK`` under torchrun), else CPU.

    ``"cuda"`` without an index also picks the local rank's GPU; asking for CUDA where there is
    none is an error naming ``--device``.
    """
    if isinstance(device, torch.device):
        requested = device
    else:
        name = (device or "auto").strip().lower()
        if name == "auto":
            if not torch.cuda.is_available():
                return torch.device("cpu")
            name = "cuda"
        try:
            requested = torch.device(name)
        except RuntimeError:
            raise DataonomyError(f"--device '{device}': expected auto, cpu, cuda or cuda:N") from None
    if requested.type == "cuda":
        if not torch.cuda.is_available():
            raise DataonomyError(f"--device {device}: no CUDA device is available here (use cpu or auto)")
        index = requested.index
        if index is None:
            index = int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()
        if index >= torch.cuda.device_count():
            raise DataonomyError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are available"
            )
        return torch.device("cuda", index)
    return requested
