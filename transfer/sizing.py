"""A fine-tune sized for the machine it runs on (``transfer finetune --fit-machine``, the default): the training
crop from the set's image sizes, the batch from the memory one training image takes.

Measured on a new data set with the defaults (whole images at batch 32): 0.2 images/s and 14 GB on a 2-core
CPU. The crop is capped per device kind (:data:`CROP_CAP`); the batch is what fits in :data:`MEMORY_SHARE` of the
memory available now, counting each image's activations (measured with forward hooks on the run's own model, at
the training side) with a 10 % margin, after the weights, their gradients and the optimiser's momentum. Measured
on efficientnet_lite0 segdec at 256 px (one step, forward and backward, peak RSS growth): 392 MB at batch 4 and
1,524 MB at batch 16, where the activations count 90 MB an image. Options the user gave are never changed, and the chosen values are
recorded in the run's ``config.json``, so ``--config`` reruns it as it trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

#: The largest training crop per device kind: larger images are trained on crops of this side (a multiple of the
#: output stride). On a CPU a 512 px image costs 4x a 256 px crop per step; a GPU takes whole DAGM images.
CROP_CAP = {"cpu": 256, "cuda": 512}
#: The share of the available memory a training step may take (the rest: data loading, validation, the system).
MEMORY_SHARE = 0.5
BATCH_RANGE = (2, 32)
#: A sized batch leaves an epoch at least this many steps: on a few-image set (NEU-Seg with 10 training images)
#: the memory's batch of 32 is larger than the training set, and even a batch of the whole set trains one step
#: an epoch between full validations.
MIN_STEPS_PER_EPOCH = 4
#: An epoch of a sized run sees at least this many training images (``steps_per_epoch`` set when the set holds
#: fewer): early stopping counts epochs, and on NEU-Seg with 10 training images (batch 2, 5 steps an epoch) it
#: ended a run after 45 steps at validation cell AP 0.634 and IoU 0.214, where epochs of 32 steps reached 0.78.
MIN_EPOCH_IMAGES = 64


@dataclass(frozen=True)
class Sizing:
    """What :func:`fit_sizes` chose and from what."""

    crop_size: int | None
    batch_size: int
    smallest_side: int
    training_side: int
    bytes_per_image: int
    fixed_bytes: int
    available: int
    training_images: int = 0
    # the batch is the training set's share (MIN_STEPS_PER_EPOCH), not what fits in memory
    capped_by_set: bool = False

    def line(self, device: str) -> str:
        crop = (
            f"training crops of {self.crop_size} px (smallest image side {self.smallest_side})"
            if self.crop_size
            else f"whole images (smallest side {self.smallest_side})"
        )
        why = (
            f"{self.training_images} training images, at least {MIN_STEPS_PER_EPOCH} steps an epoch"
            if self.capped_by_set
            else f"about {self.bytes_per_image / 2**20:.0f} MB a training image"
        )
        return (
            f"sized for this machine ({device}, {self.available / 2**30:.1f} GB available): {crop}, batch "
            f"{self.batch_size} ({why}); give --crop-size/--batch-size to choose, or --no-fit-machine"
        )


def choose_crop(smallest_side: int, output_stride: int, cap: int) -> int | None:
    """The training crop: None (whole images) when every image fits under ``cap``, else the largest multiple of
    ``output_stride`` not above ``cap`` nor the smallest side."""
    if smallest_side <= cap:
        return None
    side = min(cap, smallest_side)
    return max(output_stride, side - side % output_stride)


def choose_batch(bytes_per_image: int, fixed_bytes: int, available: int, most: int = BATCH_RANGE[1]) -> int:
    """The largest batch (at least 2, at most ``most``) whose images fit in ``MEMORY_SHARE`` of ``available`` after
    ``fixed_bytes``."""
    room = available * MEMORY_SHARE - fixed_bytes
    fits = int(room // max(1, bytes_per_image))
    return max(BATCH_RANGE[0], min(most, fits))


def activation_bytes(model: nn.Module, side: int, device: torch.device | str = "cpu") -> int:
    """Bytes of the outputs of every leaf module for one ``side`` x ``side`` image: what autograd keeps for the
    backward pass (a forward pass without gradients, hooks summing each output's size)."""
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        for t in output if isinstance(output, tuple | list) else (output,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        was_training = model.training
        model.train()  # the training graph (BatchNorm in training mode, auxiliary outputs)
        with torch.no_grad():
            model(torch.zeros(1, 3, side, side, device=device))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return total


def parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def available_memory(device: torch.device) -> int:
    """Bytes free now: the GPU's (``torch.cuda.mem_get_info``) or the machine's (Linux ``MemAvailable``, else
    the physical pages ``os.sysconf`` reports free)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def fit_sizes(
    model: nn.Module, sides: list[int], output_stride: int, device: torch.device, crop_size, batch_size
) -> Sizing:
    """Crop and batch for training ``model`` on the training images whose shorter sides are ``sides`` on
    ``device``; a value given (not None) is kept and only the other one chosen. A chosen batch is what fits in
    memory, and at most a :data:`MIN_STEPS_PER_EPOCH`-th of the training images (at least one)."""
    smallest = min(sides)
    if crop_size is None:
        crop_size = choose_crop(smallest, output_stride, CROP_CAP.get(device.type, CROP_CAP["cuda"]))
    # Whole images: a batch is padded to its largest image, so the largest shorter side is a floor of the cost.
    side = crop_size or max(sides)
    per_image = int(1.1 * activation_bytes(model, side, device))  # freed as the backward pass goes
    fixed = 3 * parameter_bytes(model)  # weights, their gradients, SGD momentum
    available = available_memory(device)
    capped = False
    if batch_size is None:
        batch_size = choose_batch(per_image, fixed, available)
        share = max(1, len(sides) // MIN_STEPS_PER_EPOCH)
        capped, batch_size = share < batch_size, min(batch_size, share)
    return Sizing(crop_size, batch_size, smallest, side, per_image, fixed, available, len(sides), capped)


def fit_to_machine(config, device_name: str | None, given: set[str], log=print):
    """``config`` (a :class:`transfer.config.FinetuneConfig`) with the crop and batch the user did not give
    sized for the device (:func:`fit_sizes`), for heads that train on crops; the config unchanged otherwise. A
    sized batch on a set of fewer than :data:`MIN_EPOCH_IMAGES` training images also gets epochs of that many
    images (``steps_per_epoch``), unless the user gave it."""
    from dataonomy.datasets.base import image_size as header_size
    from dataonomy.devices import resolve_device
    from transfer.config import replace
    from transfer.data import scaled_size

    if "crop_size" not in config.head_kind.options or {"crop_size", "batch_size"} <= given:
        return config
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return config  # under torchrun every process must train the same config: give the sizes
    device = resolve_device(device_name or "auto")
    task = config.head_kind.make_task(config)  # its training fold and its model: read once here
    samples = task.train_set.images.samples
    sides = [min(scaled_size(*header_size(s.path)[::-1], config.image_size)) for s in samples]
    model = task.build_model().to(device)
    sizing = fit_sizes(
        model, sides, config.output_stride, device,
        config.segdec.crop_size if "crop_size" in given else None,
        config.batch_size if "batch_size" in given else None,
    )  # fmt: skip
    del model, task
    changes = dict(crop_size=sizing.crop_size, batch_size=sizing.batch_size)
    line = sizing.line(device.type)
    steps = -(-MIN_EPOCH_IMAGES // sizing.batch_size)  # ceil
    if (
        "batch_size" not in given
        and config.steps_per_epoch is None
        and len(sides) // sizing.batch_size < steps
    ):
        changes["steps_per_epoch"] = steps
        line += f"; epochs of {steps} steps (at least {MIN_EPOCH_IMAGES} images; --steps-per-epoch to choose)"
    log(line)
    return replace(config, **changes)


__all__ = [
    "BATCH_RANGE",
    "CROP_CAP",
    "MEMORY_SHARE",
    "Sizing",
    "activation_bytes",
    "available_memory",
    "choose_batch",
    "choose_crop",
    "fit_sizes",
    "fit_to_machine",
]
