"""Decompression bombs: an image or mask whose header claims 30000 x 30000 pixels (a few hundred bytes on disk)
is refused in one line naming the file by every reader, skipped and reported under --skip-bad, and the limit is
settable for genuinely large frames (issue 29)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataonomy.cli import app as dataonomy_app
from dataonomy.cli_utils import run_app
from dataonomy.datasets.base import MAX_IMAGE_PIXELS_ENV, image_size, max_image_pixels, open_image
from dataonomy.datasets.synthetic import (
    KsddLayout,
    Rendering,
    make_synthetic_dagm,
    make_synthetic_kolektor,
    make_synthetic_mvtec,
)
from dataonomy.errors import BadImageError, DataonomyError


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG header for ``width`` x ``height`` 8-bit gray pixels, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _jpeg_tree(images: Path) -> None:
    images.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(images / f"{i}.jpg")
        mask = np.zeros((32, 32), np.uint8)
        mask[4:12, 4:12] = 255 * (i == 2)
        Image.fromarray(mask).save(images / f"{i}.png")


def tree(reader: str, root: Path) -> tuple[list[str], Path, Path, int]:
    """A small tree for ``reader``: (inspect's extra options, an image file, a mask file, its image count)."""
    if reader == "dagm":
        make_synthetic_dagm(
            root, classes=[1], images_per_split=6, defect_fraction=0.34, rendering=Rendering(size=32)
        )
        test = root / "Class1" / "Test"
        return ["--split", "test"], test / "0001.PNG", sorted((test / "Label").glob("*_label.PNG"))[0], 6
    if reader == "mvtec":
        make_synthetic_mvtec(
            root, classes=[1], train_images=2, test_good=1, test_defective=2, rendering=Rendering(size=32)
        )
        mask = sorted(root.glob("*/ground_truth/*/*.png"))[0]
        image = sorted(root.glob("*/test/good/*.png"))[0]
        return ["--split", "test"], image, mask, 3
    if reader == "kolektor":
        make_synthetic_kolektor(root, KsddLayout(items=1, parts=3), rendering=Rendering(size=32))
        return [], root / "kos01" / "Part0.jpg", root / "kos01" / "Part1_label.bmp", 3
    images = root / "ok" if reader == "folder" else root
    _jpeg_tree(images)
    return [], images / "0.jpg", images / "2.png", 3


def _inspect(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_app(dataonomy_app, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


@pytest.mark.parametrize("reader", ["dagm", "mvtec", "kolektor", "pairs", "folder"])
@pytest.mark.parametrize("role", ["image", "mask"])
def test_a_bomb_is_one_line_naming_it_or_skipped(reader, role, tmp_path, capsys):
    extra, image, mask, count = tree(reader, tmp_path / reader)
    bad = image if role == "image" else mask
    bad.write_bytes(bomb_png())
    argv = ["inspect", "--dataset", reader, "--root", str(tmp_path / reader), *extra]
    code, _, err = _inspect(argv, capsys)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(bad) in lines[0] and "30000 x 30000" in lines[0] and MAX_IMAGE_PIXELS_ENV in lines[0]
    with pytest.warns(UserWarning, match="skipping .*30000 x 30000"):
        code, out, err = _inspect([*argv, "--skip-bad"], capsys)
    assert code == 0, err
    assert f"{count - 1} images" in out


def test_the_limit_is_settable_and_checked(tmp_path, monkeypatch):
    big = tmp_path / "wide.png"
    Image.fromarray(np.zeros((4, 3000), np.uint8)).save(big)  # 12,000 pixels: a line-scan strip in small
    assert max_image_pixels() == 178_956_970 and image_size(big) == (3000, 4)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "10000")
    with pytest.raises(
        BadImageError, match=r"wide.png: its header says 3000 x 4 = 12,000 pixels, above the limit of 10,000"
    ):
        open_image(big)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "0")  # no limit: PIL's own bound is lifted too
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    assert image_size(bomb) == (30_000, 30_000)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "lots")
    with pytest.raises(DataonomyError, match=f"{MAX_IMAGE_PIXELS_ENV}='lots': must be a whole number"):
        image_size(big)
    assert Image.MAX_IMAGE_PIXELS is not None  # PIL's global bound is left as it was


# --- folder links (issue 29, part 2) -----------------------------------------------------------------------------


def _class_tree(root: Path) -> Path:
    for cls in ("NOK", "OK"):
        (root / cls / "sub").mkdir(parents=True)
        for i in range(6):
            where = root / cls / ("sub" if i >= 4 else "")
            Image.fromarray(np.full((16, 16), 20 * i, np.uint8)).save(where / f"{cls}{i}.jpg")
    return root


def test_folder_reader_reads_each_real_file_once_through_links(tmp_path):
    from dataonomy.datasets import ImageFolderDataset

    root = _class_tree(tmp_path / "tree")
    (root / "OK" / "loop").symlink_to("..", target_is_directory=True)  # back up to the root: a loop
    (root / "OK" / "again").symlink_to(root / "OK" / "sub", target_is_directory=True)
    (root / "OK" / "twice.jpg").symlink_to(root / "OK" / "OK0.jpg")
    with pytest.warns(UserWarning) as caught:
        ds = ImageFolderDataset(root)
    assert len(ds.samples) == 12  # the real files, each once, in its own class
    assert sorted(s.label for s in ds.samples) == ["NOK"] * 6 + ["OK"] * 6
    assert len({Path(s.path).resolve() for s in ds.samples}) == 12
    messages = " ".join(str(w.message) for w in caught)
    assert "did not follow 2 folder link(s)" in messages and "loop" in messages
    assert "1 file(s) are a second name of a file already listed" in messages and "twice.jpg" in messages


def test_folder_reader_follows_a_link_to_images_elsewhere(tmp_path):
    from dataonomy.datasets import ImageFolderDataset

    root = _class_tree(tmp_path / "tree")
    outside = tmp_path / "more"
    outside.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 7 * i, np.uint8)).save(outside / f"x{i}.jpg")
    (root / "OK" / "linked").symlink_to(outside, target_is_directory=True)
    ds = ImageFolderDataset(root)
    assert sum(s.label == "OK" for s in ds.samples) == 9 and len(ds.samples) == 15


def test_dagm_reads_image_and_mask_links_to_files_outside_alike(tmp_path):
    """Links are followed for images and masks alike; only a labels file's names must stay inside."""
    from dataonomy.datasets import DAGM, load_mask

    source = make_synthetic_dagm(
        tmp_path / "src", classes=[1], images_per_split=6, defect_fraction=0.34, rendering=Rendering(size=32)
    )
    linked = tmp_path / "linked" / "Class1" / "Test"
    (linked / "Label").mkdir(parents=True)
    original = source / "Class1" / "Test"
    for f in original.glob("*.PNG"):
        (linked / f.name).symlink_to(f.resolve())
    for f in (original / "Label").glob("*_label.PNG"):
        (linked / "Label" / f.name).symlink_to(f.resolve())
    (linked / "Label" / "Labels.txt").write_text((original / "Label" / "Labels.txt").read_text())
    mine, theirs = DAGM(tmp_path / "linked", split="test"), DAGM(source, split="test")
    assert [s.path.name for s in mine.samples] == [s.path.name for s in theirs.samples]
    assert [s.defect for s in mine.samples] == [s.defect for s in theirs.samples]
    for a, b in zip(mine.samples, theirs.samples, strict=True):
        if a.defect:
            assert np.array_equal(load_mask(a.mask, (32, 32)), load_mask(b.mask, (32, 32)))


def test_defect_readers_report_two_names_of_one_image(tmp_path):
    from dataonomy.datasets import ImageMaskPairs

    root = tmp_path / "pairs"
    _jpeg_tree(root)
    (root / "3.jpg").symlink_to(root / "0.jpg")
    with pytest.warns(
        UserWarning, match=r"1 image\(s\) are a second name of an image already listed .*3.jpg"
    ):
        ds = ImageMaskPairs(root)
    assert len(ds.samples) == 4  # reported, not dropped: the listing a manifest fingerprints stays as it was
