"""One registry of architectures (dataonomy.architectures) read by curation's backbones and training's models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dataonomy.architectures import (
    _ARCHITECTURES,
    Architecture,
    get_architecture,
    list_architectures,
    register_architecture,
)
from dataonomy.backbones import describe_backbone, get_backbone_spec, list_backbones
from dataonomy.errors import DataonomyError
from transfer import models
from transfer.checkpoint import finetune_base_fields


def test_backbones_and_models_read_one_entry_per_architecture():
    assert set(list_backbones()) <= set(list_architectures())
    assert set(models.list_models()) == set(list_architectures())
    for name in list_backbones():
        arch, spec = get_architecture(name), get_backbone_spec(name)
        assert spec.preprocessing is arch.imagenet.preprocessing and spec.feature_dim == arch.feature_dim
        assert spec.classifier == arch.head_key
        assert describe_backbone(name)["weights_id"] == arch.imagenet.weights_id()
    for name in models.list_models():
        assert models.model_spec(name) is get_architecture(name)
        # Fine-tuning from ImageNet normalises as the weights were trained (scratch the same way).
        for base in ("scratch", "imagenet"):
            fields = finetune_base_fields(base, name)
            assert (fields["mean"], fields["std"]) == (
                get_architecture(name).mean,
                get_architecture(name).std,
            )
    # Inception V3: the backbone keeps torchvision's transform_input and ImageNet's mean/std; the trainable trunk
    # has no transform_input and takes the [-1, 1] range those weights were trained on.
    inception = get_architecture("inception_v3")
    assert inception.imagenet.preprocessing.mean == (0.485, 0.456, 0.406)
    assert inception.mean == (0.5, 0.5, 0.5) and "transform_input" in inception.imagenet.preprocessing.notes
    # The pooled width each entry states is what the trainable model's classifier reads.
    for name in ("small_cnn", "resnet18"):
        assert (
            models.get_model(name, 3, init=False).classifier.in_features == get_architecture(name).feature_dim
        )


def test_an_architecture_without_imagenet_weights_says_so_in_one_line():
    with pytest.raises(
        DataonomyError, match="^--init/--base imagenet: no ImageNet weights are known for small_cnn$"
    ):
        models.imagenet_state_dict("small_cnn")
    with pytest.raises(
        DataonomyError, match=r"^--arch 'vgg': unknown architecture \(known: efficientnet_lite0,"
    ):
        models.model_spec("vgg")


def test_a_new_architecture_is_one_entry_and_one_builder(monkeypatch):
    monkeypatch.setattr(_ARCHITECTURES, "items", dict(_ARCHITECTURES.items))
    monkeypatch.setattr(models, "_MODELS", dict(models._MODELS))
    get_architecture.cache_clear()
    try:
        register_architecture("tiny_mlp")(
            lambda: Architecture("tiny_mlp", feature_dim=4, image_size=16, min_image_size=4, dropout=0.1)
        )

        @models.register_model("tiny_mlp")
        def tiny_mlp(num_classes, dropout=0.0, aux_logits=False, init=True):
            return models.ClassifierNet(nn.Conv2d(3, 4, 3, padding=1), 4, num_classes, dropout)

        net = models.get_model("tiny_mlp", 2)
        assert net(torch.zeros(1, 3, 16, 16)).shape == (1, 2) and net.dropout.p == 0.1
        with pytest.raises(DataonomyError, match="needs inputs of at least 4x4"):
            models.check_image_size("tiny_mlp", 3)
        with pytest.raises(DataonomyError, match="unknown architecture"):
            models.register_model("undescribed")
    finally:
        get_architecture.cache_clear()
