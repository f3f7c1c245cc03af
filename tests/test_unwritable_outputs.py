"""Outputs that cannot be written (issue 29, part 4): every writer says, in one line, which path and why (the OS's
reason), exits 2, and leaves nothing that looks complete. A folder whose parent is a file stands in for a
read-only disk when the tests run as root (root writes through permissions); a tiny tmpfs gives a full disk and
a read-only one where mounting is permitted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_export import make_run

from dataonomy.cli import app as dataonomy_app
from dataonomy.cli_utils import run_app
from dataonomy.datasets.synthetic import Rendering, make_synthetic_dagm
from dataonomy.errors import DataonomyError
from dataonomy.io import atomic_path, check_writable, staged_folder, write_json
from transfer.cli import app as transfer_app

REPO = Path(__file__).resolve().parents[1]


def _one_line(app, argv, capsys, *needles) -> str:
    code = run_app(app, argv)
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture()
def blocked(tmp_path) -> Path:
    """A path under a regular file: no folder can be made there."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    return blocker / "sub"


def test_graph_and_features_and_select_name_the_unwritable_out(blocked, tmp_path, shared_data, capsys):
    manifest = REPO / "data_manifests" / "dagm_class1_tiny_k20.json"
    _one_line(
        dataonomy_app,
        ["graph", str(manifest), "--format", "graphml", "--out", str(blocked / "g.graphml")],
        capsys, str(blocked), "cannot write", "Not a directory",
    )  # fmt: skip
    dagm = make_synthetic_dagm(
        tmp_path / "dagm", classes=[1], images_per_split=4, rendering=Rendering(size=32)
    )
    _one_line(
        dataonomy_app,
        ["features", "--dataset", "dagm", "--root", str(dagm), "--backbone", "efficientnet_lite0",
         "--out", str(blocked / "f.h5")],
        capsys, str(blocked), "Not a directory",
    )  # fmt: skip
    _one_line(
        dataonomy_app,
        ["select", "--target-root", str(dagm), "--source-root", str(shared_data / "tiny-imagenet-200-subset"),
         "--k", "2", "--out", str(blocked / "m.json")],
        capsys, "--out", "is a file, not a folder",
    )  # fmt: skip
    assert not list(tmp_path.glob("**/*.partial"))


def test_finetune_and_export_name_the_unwritable_out(blocked, tmp_path, dagm_class1_test, capsys):
    _one_line(
        transfer_app,
        ["finetune", "--base", "scratch", "--arch", "small_cnn", "--dagm", str(dagm_class1_test), "--epochs", "1",
         "--steps-per-epoch", "1", "--batch-size", "2", "--image-size", "32", "--output-stride", "8", "--out", str(blocked / "run")],
        capsys, "--out", str(blocked / "run"), "Not a directory",
    )  # fmt: skip
    run = make_run(tmp_path, dagm_class1_test, "small_cnn", image_size=64)
    _one_line(
        transfer_app,
        ["export", "--model", str(run), "--onnx", str(blocked / "m.onnx"), "--images", "2"],
        capsys, str(blocked / "m.onnx"), "is a file, not a folder",
    )  # fmt: skip


def test_check_writable_and_atomic_writes_under_a_file(blocked):
    with pytest.raises(DataonomyError, match=r"--out .*sub/x.json: cannot write \(Not a directory"):
        check_writable(blocked / "x.json")
    with pytest.raises(DataonomyError, match="cannot write"):
        write_json(blocked / "x.json", {"a": 1})
    with pytest.raises(DataonomyError, match=r"--out .*sub/folder: cannot write"):
        with staged_folder(blocked / "folder"):
            pass


@pytest.fixture()
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (skipped where mounting is not permitted)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_is_one_line_and_leaves_nothing(tiny_disk):
    target = tiny_disk / "big.json"
    with pytest.raises(DataonomyError, match=r"big.json: cannot write \(No space left on device"):
        write_json(target, {"values": list(range(100_000))})  # about 700 KB
    assert list(tiny_disk.iterdir()) == []  # neither the file nor its temporary
    with pytest.raises(DataonomyError, match="No space left on device"):
        with staged_folder(tiny_disk / "out") as folder:
            (folder / "a.bin").write_bytes(b"\0" * 200_000)
    assert list(tiny_disk.iterdir()) == []
    with atomic_path(tiny_disk / "small.json") as tmp:  # the disk is usable again
        tmp.write_text(json.dumps({"ok": True}))
    assert (tiny_disk / "small.json").exists()


def test_read_only_disk_is_said_before_the_work(tiny_disk):
    done = subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only here ({done.stderr.decode().strip()})")
    with pytest.raises(DataonomyError, match=r"--out .*m.json: cannot write \(Read-only file system"):
        check_writable(tiny_disk / "m.json")
