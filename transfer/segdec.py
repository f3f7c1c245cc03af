"""The segmentation-decision ("segdec") defect model: one forward pass gives the image's defect score and a
defect map.

Design (Tabernik et al. 2019, Božič et al. 2021, reduced to what a few dozen masked examples can train):

* **trunk**: any registered architecture's convolutional trunk (``transfer.models``), cut at output stride 8 or
  16 (:func:`trunk_stages`, :func:`cut_trunk`). Small surface defects live in mid-level features; deeper layers
  only cost time at native resolution and blur a 16-pixel scratch into its surroundings.
* **segmentation head**: 3x3 convolution + GroupNorm + ReLU (``head_channels``), then a 1x1 convolution giving
  one defect logit per location of the trunk's grid.
* **decoder** (optional, ``map_stride`` below the output stride): the map made finer, U-Net/FPN style
  (:class:`SkipDecoder`): at each finer stride down to ``map_stride`` the head's features are upsampled, the
  trunk's features of that stride added through a 1x1 projection, and the sum refined (3x3 convolution +
  GroupNorm + ReLU). A stride-16 map upsampled to the image cannot follow a defect's edge inside its cells.
* **decision head**: global max and average pooling of the head's features and of the segmentation logits,
  then one linear layer: the image's defect logit. Its input is detached from the trunk by default
  (``detach_decision``, the segdec paper's gradient-flow adjustment): the few image labels cannot pull the
  trunk away from what the masks teach it.
* **image score**: the decision head's logit, or the map's highest logit (``score_from_map``) where validation
  ranks images better that way: fine-tuning chooses (:attr:`transfer.segdec_task.SegDecTask.image_rules`).

:class:`SegDecNet` is plain torch: ``forward`` returns :class:`SegDecOutput` (``image_logit`` (B,),
``seg_logits`` (B, 1, h, w)); the training task, losses and I/O live in :mod:`transfer.segdec_task`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn

from dataonomy.errors import DataonomyError
from transfer.models import ClassifierNet, build_model, get_model, load_state

OUTPUT_STRIDES = (4, 8, 16, 32)


class SegDecOutput(NamedTuple):
    """``image_logit``: (B,) defect logit of each image; ``seg_logits``: (B, 1, h, w) defect logit per location."""

    image_logit: torch.Tensor
    seg_logits: torch.Tensor


class _EfficientNetStem(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.conv, self.bn, self.act = net._conv_stem, net._bn0, net._swish

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _EfficientNetBlock(nn.Module):
    """One MBConv block with the drop-connect rate the package's ``extract_features`` gives it."""

    def __init__(self, block, drop_connect_rate: float):
        super().__init__()
        self.block, self.drop_connect_rate = block, drop_connect_rate

    def forward(self, x):
        return self.block(x, drop_connect_rate=self.drop_connect_rate or None)


def trunk_stages(model: ClassifierNet) -> list[tuple[str, nn.Module]]:
    """The trunk of ``model`` as an ordered list of single-input stages whose composition is ``model.features``.

    ``nn.Sequential`` trunks (small_cnn, ResNets, Inception V3) are their children; the EfficientNet package's
    trunk is its stem, then each block (its head convolution comes last).
    """
    features = model.features
    if isinstance(features, nn.Sequential):
        return list(features.named_children())
    if hasattr(features, "_blocks") and hasattr(features, "_conv_stem"):
        rate = features._global_params.drop_connect_rate or 0.0
        n = len(features._blocks)
        stages = [("stem", _EfficientNetStem(features))]
        stages += [(f"block{i}", _EfficientNetBlock(b, rate * i / n)) for i, b in enumerate(features._blocks)]
        head = nn.Sequential(features._conv_head, features._bn1, features._swish)
        return stages + [("head", head)]
    raise DataonomyError(f"{type(features).__name__}: no known way to cut this trunk at an output stride")


def stage_strides(stages: list[tuple[str, nn.Module]], probe_size: int = 256) -> list[int]:
    """Output stride after each stage, from a dry run on a ``probe_size`` input (powers of two: unpadded
    convolutions such as Inception's make the exact ratio a little off)."""
    x = torch.zeros(1, 3, probe_size, probe_size)
    strides = []
    with torch.no_grad():
        for _, stage in stages:
            was = stage.training
            stage.eval()
            x = stage(x)
            stage.train(was)
            strides.append(2 ** round(math.log2(probe_size / x.shape[-1])))
    return strides


def cut_trunk(model: ClassifierNet, output_stride: int) -> tuple[nn.Sequential, int]:
    """``(trunk, channels)``: the stages of ``model``'s trunk up to the last one at ``output_stride``."""
    if output_stride not in OUTPUT_STRIDES:
        raise DataonomyError(
            f"--output-stride {output_stride}: must be one of {', '.join(map(str, OUTPUT_STRIDES))}"
        )
    stages = trunk_stages(model)
    strides = stage_strides(stages, probe_size=max(256, 16 * output_stride))
    keep = [i for i, s in enumerate(strides) if s <= output_stride]
    if not keep or strides[keep[-1]] != output_stride:
        raise DataonomyError(
            f"--output-stride {output_stride}: this trunk's stages have strides {sorted(set(strides))}"
        )
    trunk = nn.Sequential(OrderedDict(stages[: keep[-1] + 1]))
    with torch.no_grad():
        trunk.eval()
        channels = trunk(torch.zeros(1, 3, 16 * output_stride, 16 * output_stride)).shape[1]
    trunk.train()
    return trunk, int(channels)


def _refine(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.GroupNorm(min(8, channels), channels),
        nn.ReLU(inplace=True),
    )


class SkipDecoder(nn.Module):
    """The segmentation head's features brought to a finer stride with the trunk's features there (see the
    module docstring). ``taps``: the indices of the trunk stages whose outputs it adds, finest first;
    ``channels``: their channel counts."""

    def __init__(self, taps: list[int], channels: list[int], head_channels: int):
        super().__init__()
        self.taps = tuple(taps)
        self.lateral = nn.ModuleList(nn.Conv2d(c, head_channels, 1) for c in channels)
        self.refine = nn.ModuleList(_refine(head_channels) for _ in channels)

    def forward(self, top: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """``top``: (B, head_channels, h, w) at the output stride; ``skips``: the tapped stages' outputs, finest
        first. Returns (B, head_channels, H, W) at the finest skip's size."""
        for skip, lateral, refine in zip(skips[::-1], self.lateral[::-1], self.refine[::-1], strict=True):
            up = nn.functional.interpolate(top, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            top = refine(up + lateral(skip))
        return top


def check_map_stride(map_stride: int | None, output_stride: int) -> None:
    """A one-line error unless ``map_stride`` is None or a stride at most ``output_stride``."""
    if map_stride is not None and (map_stride not in OUTPUT_STRIDES or map_stride > output_stride):
        raise DataonomyError(
            f"--map-stride {map_stride}: must be one of {', '.join(map(str, OUTPUT_STRIDES))} and at most "
            f"--output-stride ({output_stride})"
        )


def skip_decoder(
    trunk: nn.Sequential, output_stride: int, map_stride: int, head_channels: int
) -> SkipDecoder:
    """A :class:`SkipDecoder` over ``trunk`` (cut at ``output_stride``) down to ``map_stride``: one tap at the last
    stage of each stride from ``map_stride`` up to, not including, the output stride."""
    check_map_stride(map_stride, output_stride)
    stages = list(trunk.named_children())
    probe = max(256, 16 * output_stride)
    strides = stage_strides(stages, probe_size=probe)
    taps = [
        max(i for i, s in enumerate(strides) if s == stride)
        for stride in sorted(set(strides))
        if map_stride <= stride < output_stride
    ]
    if not taps or strides[taps[0]] != map_stride:
        raise DataonomyError(
            f"--map-stride {map_stride}: this trunk's stages have strides {sorted(set(strides))}"
        )
    channels, x = [], torch.zeros(1, 3, probe, probe)
    was = trunk.training
    trunk.eval()
    with torch.no_grad():
        for i, (_, stage) in enumerate(stages[: taps[-1] + 1]):
            x = stage(x)
            if i in taps:
                channels.append(int(x.shape[1]))
    trunk.train(was)
    return SkipDecoder(taps, channels, head_channels)


class SegDecNet(nn.Module):
    """Trunk cut at ``output_stride``, segmentation head and decision head (see the module docstring).

    ``frozen_bn``: the trunk's BatchNorm layers keep their (ImageNet) statistics and affine weights in training,
    as usual when fine-tuning with batches of a few full-resolution images; off for trunks trained from scratch.
    """

    def __init__(
        self,
        trunk: nn.Module,
        channels: int,
        output_stride: int,
        head_channels: int = 64,
        detach_decision: bool = True,
        frozen_bn: bool = True,
        score_from_map: bool = False,
        decoder: SkipDecoder | None = None,
    ):
        super().__init__()
        self.trunk = trunk
        self.decoder = decoder  # None: the map at the output stride
        # The image logit is the map's highest logit instead of the decision head's: the rule validation chose
        # for the run (``image_score = "map"`` in best.pt), so every runtime (evaluate, predict, ONNX) scores alike.
        self.score_from_map = score_from_map
        self.output_stride = output_stride
        self.detach_decision = detach_decision
        self.frozen_bn = frozen_bn
        self.seg_features = nn.Sequential(
            nn.Conv2d(channels, head_channels, 3, padding=1, bias=False),
            nn.GroupNorm(min(8, head_channels), head_channels),
            nn.ReLU(inplace=True),
        )
        self.seg_logit = nn.Conv2d(head_channels, 1, 1)
        self.decision = nn.Linear(2 * head_channels + 2, 1)
        # A defect is rare: start every location and image at a low prior (as detection heads do), so the
        # first steps do not spend themselves pushing the whole map down.
        nn.init.constant_(self.seg_logit.bias, -3.0)
        nn.init.constant_(self.decision.bias, -2.0)
        if frozen_bn:
            self.train()  # freezes the trunk's BatchNorm parameters before an optimiser collects them

    @property
    def head_channels(self) -> int:
        return self.seg_logit.in_channels

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.frozen_bn:
            for m in self.trunk.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
                    for p in m.parameters():
                        p.requires_grad_(False)
        return self

    def forward(self, x: torch.Tensor) -> SegDecOutput:
        if self.decoder is None:
            features = self.seg_features(self.trunk(x))
        else:
            skips = []
            for i, stage in enumerate(self.trunk):
                x = stage(x)
                if i in self.decoder.taps:
                    skips.append(x)
            features = self.decoder(self.seg_features(x), skips)
        seg = self.seg_logit(features)
        if self.score_from_map:
            return SegDecOutput(seg.amax((1, 2, 3)), seg)
        if self.detach_decision:
            features, pooled_seg = features.detach(), seg.detach()
        else:
            pooled_seg = seg
        pooled = torch.cat(
            [
                features.amax((2, 3)),
                features.mean((2, 3)),
                pooled_seg.amax((2, 3)),
                pooled_seg.mean((2, 3)),
            ],
            dim=1,
        )
        return SegDecOutput(self.decision(pooled).squeeze(1), seg)


def build_segdec(
    arch: str,
    init: str = "scratch",
    output_stride: int = 16,
    head_channels: int = 64,
    detach_decision: bool = True,
    frozen_bn: bool | None = None,
    map_stride: int | None = None,
) -> SegDecNet:
    """A segdec model on ``arch``'s trunk initialised from ``init`` (``scratch``, ``imagenet``, or a pretrain /
    fine-tune checkpoint of the same architecture; its classifier is dropped). ``frozen_bn`` defaults to on
    for pretrained trunks and off from scratch; ``map_stride`` below ``output_stride`` adds a
    :class:`SkipDecoder`."""
    base = get_model(arch, 2, init=True) if init == "scratch" else build_model(arch, 2, init)
    trunk, channels = cut_trunk(base, output_stride)
    if frozen_bn is None:
        frozen_bn = init != "scratch"
    decoder = _decoder(trunk, output_stride, map_stride, head_channels)
    return SegDecNet(
        trunk, channels, output_stride, head_channels, detach_decision, frozen_bn, decoder=decoder
    )


def _decoder(trunk, output_stride: int, map_stride: int | None, head_channels: int) -> SkipDecoder | None:
    if map_stride is None or map_stride == output_stride:
        return None
    return skip_decoder(trunk, output_stride, map_stride, head_channels)


def saved_segdec(
    arch: str,
    output_stride: int,
    head_channels: int,
    weights: dict,
    source: str,
    score_from_map: bool = False,
    map_stride: int | None = None,
) -> SegDecNet:
    """The segdec model a fine-tuning run saved (:class:`transfer.checkpoint.ModelRecord` gives the geometry, the
    map's stride and the image score validation chose), weights loaded; a missing or wrong-shaped tensor is a
    one-line error naming it and ``source``."""
    trunk, channels = cut_trunk(get_model(arch, 2, init=False), output_stride)
    decoder = _decoder(trunk, output_stride, map_stride, head_channels)
    model = SegDecNet(
        trunk, channels, output_stride, head_channels, score_from_map=score_from_map, decoder=decoder
    )
    load_state(model, weights, source, "the segdec model it describes")
    return model


def upsample_map(seg_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Defect probabilities (B, H, W) at image size from (B, 1, h, w) logits: each grid cell's value sits at
    its centre (bilinear, ``align_corners=False``), so a map of stride s lines up with the image."""
    probs = torch.sigmoid(seg_logits.float())
    return nn.functional.interpolate(probs, size=size, mode="bilinear", align_corners=False)[:, 0]


__all__ = [
    "OUTPUT_STRIDES",
    "SegDecNet",
    "SegDecOutput",
    "SkipDecoder",
    "build_segdec",
    "check_map_stride",
    "saved_segdec",
    "skip_decoder",
    "cut_trunk",
    "stage_strides",
    "trunk_stages",
    "upsample_map",
]
