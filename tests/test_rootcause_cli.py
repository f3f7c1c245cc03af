"""`transfer stamp` and `transfer rootcause` end to end on real DAGM Class1 images written to files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataonomy.cli_utils import run_app
from transfer import metrics, rootcause, rootcause_run, stamps
from transfer.cli import app
from transfer.stage_config import RootcauseConfig

ONSET = 10


@pytest.fixture(scope="module")
def production_run(tmp_path_factory, dagm_class1_test) -> Path:
    """The first 40 Class1 test images as one production run, named frame0.png .. frame39.png (unpadded numbers:
    only a natural sort reads them in order)."""
    folder = tmp_path_factory.mktemp("run") / "frames"
    folder.mkdir()
    for i in range(40):
        (folder / f"frame{i}.png").write_bytes((dagm_class1_test / f"{i + 1:04d}.PNG").read_bytes())
    return folder


@pytest.fixture(scope="module")
def stamped(tmp_path_factory, production_run) -> Path:
    out = tmp_path_factory.mktemp("stamped") / "stamped"
    argv = ["stamp", "--images", str(production_run), "--out", str(out), "--kind", "scratch",
            "--start", str(ONSET), "--seed", "3"]  # fmt: skip
    assert run_app(app, argv) == 0
    return out


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im)


def _frames(folder: Path) -> np.ndarray:
    return np.stack([_png(folder / f"frame{i}.png") for i in range(40)])


def test_stamp_writes_the_seeded_stamp_from_start_on(stamped, production_run):
    record = json.loads((stamped / "stamp.json").read_text())
    assert record["start"] == ONSET and record["first_stamped"].endswith(f"frame{ONSET}.png")
    expected, stamp = stamps.stamp_systematic_defect(_frames(production_run), "scratch", seed=3, start=ONSET)
    np.testing.assert_array_equal(_frames(stamped / "images"), expected)
    np.testing.assert_array_equal(_png(stamped / "stamp_mask.png") > 0, stamp)
    assert not np.array_equal(expected[ONSET], _frames(production_run)[ONSET])


def test_rootcause_finds_the_scratch_where_it_starts(stamped, tmp_path, capsys):
    out = tmp_path / "rc"
    argv = ["rootcause", "--images", str(stamped / "images"), "--window", "30", "--out", str(out)]
    assert run_app(app, argv) == 0
    terminal = capsys.readouterr().out.splitlines()
    report = json.loads((out / "rootcause.json").read_text())
    assert report["verdict"] == "yes" and report["score"] > rootcause.DEFAULT_Z_THRESHOLD
    assert report["onset"] == ONSET
    assert Path(report["onset_image"]) == stamped / "images" / f"frame{ONSET}.png"
    stamp = _png(stamped / "stamp_mask.png") > 0
    mask = _png(out / "mask.png") > 0
    assert metrics.iou(mask, stamp) >= 0.5
    defect_map = np.load(out / "map.npy")
    assert defect_map.shape == (512, 512) and defect_map.dtype == np.float32
    assert defect_map[stamp].mean() > 5 * defect_map[~stamp].mean()
    assert _png(out / "map.png").ndim == 3
    # Windows of 30 every 5 images: 0-29, 5-34, 10-39, each reported on the terminal and in windows.jsonl.
    lines = [json.loads(x) for x in (out / "windows.jsonl").read_text().splitlines()]
    assert [(w["start"], w["stop"]) for w in lines] == [(0, 30), (5, 35), (10, 40)]
    assert lines == report["windows"]
    assert all(w["verdict"] == "yes" and w["onset"] == ONSET for w in lines)
    assert [line.split(":")[0] for line in terminal[:3]] == ["images 0-29 (frame0.png .. frame29.png)",
                                                            "images 5-34 (frame5.png .. frame34.png)",
                                                            "images 10-39 (frame10.png .. frame39.png)"]  # fmt: skip
    assert terminal[3].startswith("common defect: yes") and f"frame{ONSET}.png" in terminal[3]


def test_clean_run_gives_no_and_an_empty_mask(production_run, tmp_path, capsys):
    out = tmp_path / "rc"
    assert run_app(app, ["rootcause", "--images", str(production_run / "*.png"), "--out", str(out)]) == 0
    report = json.loads((out / "rootcause.json").read_text())
    assert report["verdict"] == "no" and report["score"] == 0 and report["onset"] is None
    assert not (_png(out / "mask.png") > 0).any()
    assert "common defect: no" in capsys.readouterr().out


def test_stream_reads_one_window_ahead_not_the_whole_batch(stamped, tmp_path, monkeypatch):
    """Images are read lazily: the first window is reported after 30 images have been read, not 40."""
    events = []
    real = rootcause_run.read_gray

    def logged(path, *args):
        events.append("read")
        return real(path, *args)

    monkeypatch.setattr(rootcause_run, "read_gray", logged)
    images = sorted((stamped / "images").glob("*.png"), key=lambda p: int(p.stem[5:]))
    report = rootcause_run.rootcause_stream(
        RootcauseConfig(images=images, window=30, stride=5, window_maps=True),
        tmp_path / "rc",
        on_window=lambda entry: events.append(entry["start"]),
    )
    assert events.index(0) == 30 and events.index(5) == 36 and events.count("read") == 40
    assert report["onset"] == ONSET
    for start in (0, 5, 10):
        assert np.load(tmp_path / "rc" / "windows" / f"{start:06d}_map.npy").shape == (512, 512)
        assert _png(tmp_path / "rc" / "windows" / f"{start:06d}_mask.png").shape == (512, 512)


def test_bad_inputs_are_one_line_errors_with_no_output(production_run, tmp_path, capsys):
    out = tmp_path / "out"

    def error(images, *options) -> str:
        code = run_app(app, ["rootcause", "--images", str(images), "--out", str(out), *options])
        captured = capsys.readouterr()
        assert code == 2, captured.out
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
        assert not out.exists()
        return captured.err

    assert "needs at least 30 images, --images gives 11" in error(production_run / "frame1*.png")  # 1, 10-19
    assert "needs at least 50 images, --images gives 40" in error(production_run, "--window", "50")
    assert "no files match" in error(tmp_path / "none" / "*.png")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in sorted(production_run.iterdir())[:5]:
        (mixed / path.name).write_bytes(path.read_bytes())
    Image.fromarray(_png(production_run / "frame7.png")[:256]).save(mixed / "frame99.png")
    assert "frame99.png is 512x256 but" in error(mixed, "--window", "3")
    (mixed / "frame99.png").unlink()
    (mixed / "frame98.png").write_bytes(b"\x89PNG but not really")
    assert "frame98.png: not an image file" in error(mixed, "--window", "3")
    (mixed / "frame98.png").unlink()
    (mixed / "readme.txt").write_text("a production run")
    assert "readme.txt: not an image file" in error(mixed / "*", "--window", "3")
    assert "holds no image files" in error(_empty(tmp_path))
    assert "--window 2: must be at least 3" in error(mixed, "--window", "2")
    code = run_app(app, ["stamp", "--images", str(mixed / "*.png"), "--out", str(out), "--start", "9"])
    assert code == 2 and "--start 9" in capsys.readouterr().err and not out.exists()


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images")
    return folder


def test_mixed_sizes_framed_tiles_bad_files_and_one_onset(production_run, stamped, tmp_path, capsys):
    # Tiles with a dark frame line (as cut tiles often have) in different sizes, one unreadable file.
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for i in range(40):
        pixels = _png(production_run / f"frame{i}.png")[: 512 - 64 * (i % 2)].copy()
        pixels[:2], pixels[-2:], pixels[:, :2], pixels[:, -2:] = 0, 0, 0, 0
        Image.fromarray(pixels).save(tiles / f"tile{i}.png")
    (tiles / "tile40.png").write_bytes(b"\x89PNG truncated")

    def run(*options) -> tuple[int, str, str]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        code = run_app(
            app, ["rootcause", "--images", str(tiles), "--out", str(out), "--stride", "10", *options]
        )
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, _, err = run("--skip-bad")
    assert code == 2 and "give --resize W,H or --crop W,H" in err
    code, _, err = run("--resize", "256")
    assert code == 2 and "tile40.png: not an image file" in err
    # The frame line sits at the same place in every tile: without the border band it is a "common defect".
    code, out, err = run("--resize", "256", "--skip-bad", "--border", "0")
    assert code == 0 and "common defect: yes" in out and "warning: the common defect" in out, err
    code, out, err = run("--resize", "256", "--skip-bad")  # default band: 4 px
    assert code == 0 and "common defect: no" in out
    code, out, _ = run("--crop", "400,448", "--skip-bad")
    assert code == 0 and "common defect: no" in out
    # One onset: the closing line's, defined as the first detecting window's; window lines carry none.
    code = run_app(app, ["rootcause", "--images", str(stamped / "images"), "--out", str(tmp_path / "s")])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[-2].endswith(
        f"onset: image {ONSET} ({stamped / 'images' / f'frame{ONSET}.png'})"
    )
    assert all("onset" not in line for line in lines[:-2])


def test_stamp_handles_mixed_sizes_with_one_centred_stamp(production_run, tmp_path):
    """Tiles of different sizes: one stamp drawn at the largest size, each image stamped with its centred part,
    so the defect stays at one place relative to the image centre."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    frames = sorted(production_run.iterdir(), key=lambda p: int(p.stem[5:]))[:6]
    for i, path in enumerate(frames):
        pixels = _png(path)
        (h, w) = (512, 512) if i % 2 == 0 else (384, 448)
        top, left = (512 - h) // 2, (512 - w) // 2
        Image.fromarray(pixels[top : top + h, left : left + w]).save(mixed / path.name)
    out = tmp_path / "stamped"
    assert (
        run_app(app, ["stamp", "--images", str(mixed), "--out", str(out), "--start", "2", "--seed", "3"]) == 0
    )
    record = json.loads((out / "stamp.json").read_text())
    assert record["mask_size"] == [512, 512]
    stamp = _png(out / "stamp_mask.png") > 0
    for i, path in enumerate(frames):
        before, after = _png(mixed / path.name), _png(out / "images" / path.name)
        assert after.shape == before.shape
        top, left = (512 - before.shape[0]) // 2, (512 - before.shape[1]) // 2
        part = stamp[top : top + before.shape[0], left : left + before.shape[1]]
        changed = after != before
        if i < 2:
            assert not changed.any()
        else:  # only inside the centred part of the stamp, and most of it
            assert not changed[~part].any() and changed[part].mean() > 0.5


def test_resize_scales_the_border_band_with_the_enlargement(production_run, tmp_path, capsys):
    """Small tiles of two sizes with a 2-px dark frame line, enlarged to 256 px by --resize: the line becomes
    4-5 px wide, past a 4-px band in the resized frame; the band is scaled by the largest enlargement, so the
    frame is not a common defect, and the report says which band it applied."""
    tiles = tmp_path / "small"
    tiles.mkdir()
    for i in range(30):
        side = 100 if i % 2 else 128
        pixels = _png(production_run / f"frame{i}.png")[:side, :side].copy()
        pixels[:2], pixels[-2:], pixels[:, :2], pixels[:, -2:] = 0, 0, 0, 0
        Image.fromarray(pixels).save(tiles / f"tile{i}.png")
    out = tmp_path / "rc"
    code = run_app(app, ["rootcause", "--images", str(tiles), "--out", str(out), "--resize", "256"])
    printed = capsys.readouterr().out
    assert code == 0 and "common defect: no" in printed, printed
    report = json.loads((out / "rootcause.json").read_text())
    assert (
        report["parameters"]["border"] == 4 and report["parameters"]["border_applied"] == 11
    )  # ceil(4 x 2.56)


def test_mixed_shapes_crop_finds_the_onset_and_resize_warns(production_run, tmp_path):
    """Tiles of four shapes with a scratch from image 20: --crop keeps one place for it and finds the onset, with a
    wide frame band too; --resize stretches each shape differently, and says so."""
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    shapes = [(512, 512), (448, 384), (400, 448), (480, 320)]  # (height, width)
    for i in range(40):
        h, w = shapes[i % 4]
        top, left = (512 - h) // 2, (512 - w) // 2
        pixels = _png(production_run / f"frame{i}.png")[top : top + h, left : left + w]
        Image.fromarray(pixels).save(tiles / f"tile{i}.png")
    stamped = tmp_path / "stamped"
    argv = ["stamp", "--images", str(tiles), "--out", str(stamped), "--start", "20", "--seed", "3"]
    assert run_app(app, argv) == 0
    for border in ("4", "16"):
        out = tmp_path / f"crop{border}"
        argv = ["rootcause", "--images", str(stamped / "images"), "--out", str(out), "--crop", "320,400"]
        assert run_app(app, [*argv, "--border", border]) == 0
        report = json.loads((out / "rootcause.json").read_text())
        assert report["verdict"] == "yes" and report["onset"] == 20, border
    argv = [
        "rootcause",
        "--images",
        str(stamped / "images"),
        "--out",
        str(tmp_path / "resized"),
        "--resize",
        "256",
    ]
    shapes_named = (
        r"--resize 256,256: the images have 4 shapes \(tile0.png 512x512, tile1.png 384x448, \.\.\.\)"
    )
    with pytest.warns(UserWarning, match=shapes_named + ".*--crop W,H keeps the pixels"):
        assert run_app(app, argv) == 0
