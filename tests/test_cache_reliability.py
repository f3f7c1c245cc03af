"""Feature caches that are damaged or written by two runs at once (issue 14, items 8 and 10), on real
DAGM images: a damaged cache is reported in one line with advice for the command that was run, never
used; a second run on a cache being written waits for it and reuses it."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from dataonomy.cli import app as dataonomy_app
from dataonomy.cli_utils import run_app
from dataonomy.datasets.options import reader_options
from dataonomy.errors import DataonomyError
from dataonomy.feature_store import DamagedCacheError, load_features
from dataonomy.features import ensure_features, feature_cache_path


@pytest.fixture(scope="module")
def dagm_train(shared_data):
    """The 5 real DAGM Class1 training images on disk, labelled by the real Labels.txt."""
    root = shared_data / "dagm" / "Class1" / "Train"
    options = {"labels_root": shared_data / "dagm-labels", "allow_partial": True}
    return root, options


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory, dagm_train) -> Path:
    root, options = dagm_train
    out = tmp_path_factory.mktemp("good") / "dagm.h5"
    ensure_features("dagm", root, options, "efficientnet_lite0", out, batch_size=2, num_workers=0)
    return out


def _flip(path: Path, dataset: str, row: int = 0, byte: int = 3, value: int = 0x7F) -> None:
    """Overwrite one byte of a contiguous dataset in place, found through its offset in the file."""
    with h5py.File(path, "r") as f:
        dset = f[dataset]
        offset = dset.id.get_offset()
        assert offset is not None, f"{dataset} is not stored contiguously"
        row_bytes = dset.dtype.itemsize * int(np.prod(dset.shape[1:], dtype=np.int64))
    with open(path, "r+b") as fh:
        fh.seek(offset + row * row_bytes + byte)
        old = fh.read(1)[0]
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([value if old != value else value ^ 0x01]))


def _features_argv(root, options, out, *extra):
    return [
        "features", "--dataset", "dagm", "--root", str(root), "--labels-root", str(options["labels_root"]),
        "--allow-partial", "--out", str(out), "--backbone", "efficientnet_lite0", "--num-workers", "0",
        "--device", "cpu", "--batch-size", "5", *extra,
    ]  # fmt: skip


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize(
    "damage",
    ["feature bytes", "logit bytes", "image list", "done flag", "truncated", "random bytes", "empty"],
)
def test_a_damaged_cache_is_reported_never_reused(good_cache, dagm_train, tmp_path, capsys, damage):
    root, options = dagm_train
    out = tmp_path / "dagm.h5"
    shutil.copy(good_cache, out)
    data = good_cache.read_bytes()
    if damage == "feature bytes":
        # The exponent byte of a float32: the feature becomes ~1e38, as in the audit.
        _flip(out, "features", row=2, byte=4 * 17 + 3)
        with h5py.File(out, "r") as f:
            assert abs(f["features"][2, 17]) > 1e30  # the damage is in the values, nowhere else
    elif damage == "logit bytes":
        _flip(out, "logits", row=4, byte=1)
    elif damage == "image list":
        _flip(out, "targets", row=1, byte=0, value=0x05)  # another class for one image
    elif damage == "done flag":
        _flip(out, "done", row=3, byte=0, value=0x00)
    elif damage == "truncated":
        out.write_bytes(data[: len(data) // 2])
    elif damage == "random bytes":
        out.write_bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    else:
        out.write_bytes(b"")
    damaged = out.read_bytes()

    # The library (what `select` calls): damaged, naming the file, advising to delete it.
    with pytest.raises(DamagedCacheError, match="damaged") as caught:
        ensure_features("dagm", root, options, "efficientnet_lite0", out, batch_size=5, num_workers=0)
    message = str(caught.value)
    assert message.startswith(f"{out}: feature cache is damaged") and "\n" not in message
    assert "delete the file" in message and "--overwrite" not in message
    with pytest.raises(DamagedCacheError, match="damaged"):
        load_features(out)

    # `dataonomy features`: one line, exit 2, advice naming its own option; the file is left as it was.
    assert run_app(dataonomy_app, _features_argv(root, options, out)) == 2
    line = _one_error_line(capsys)
    assert f"{out}: feature cache is damaged" in line and "pass --overwrite" in line
    assert out.read_bytes() == damaged
    # --overwrite replaces it with a cache equal to the undamaged one.
    assert run_app(dataonomy_app, _features_argv(root, options, out, "--overwrite")) == 0
    assert "extracted 5 here" in capsys.readouterr().out
    np.testing.assert_allclose(load_features(out).features, load_features(good_cache).features, atol=1e-5)
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.lock"))


def test_select_reports_a_damaged_cache_with_advice_it_can_follow(dagm_class1_test, tmp_path, capsys):
    # The audit's case: bytes flipped inside the cached target features; select must stop, not select.
    cache = tmp_path / "cache"
    argv = [
        "select", "--target", "dagm", "--target-root", str(dagm_class1_test), "--k", "3",
        "--target-images-per-class", "12", "--backbone", "efficientnet_lite0", "--cache-dir", str(cache),
        "--num-workers", "0", "--device", "cpu",
    ]  # fmt: skip
    assert run_app(dataonomy_app, [*argv, "--out", str(tmp_path / "a.json")]) == 0
    capsys.readouterr()
    (written,) = cache.glob("*.h5")
    for row in range(12):
        _flip(written, "features", row=row, byte=4 * row + 3)
    out = tmp_path / "b.json"
    assert run_app(dataonomy_app, [*argv, "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert f"{written}: feature cache is damaged (12 row(s) fail their checksum" in line
    assert "delete the file and rerun" in line and "--overwrite" not in line
    assert not out.exists() and not out.with_suffix(".graphml").exists()
    # Following the advice works.
    written.unlink()
    assert run_app(dataonomy_app, [*argv, "--out", str(out)]) == 0
    assert (tmp_path / "a.json").read_text().count('"wnid"') == out.read_text().count('"wnid"') == 3


def test_a_damaged_interrupted_extraction_is_refused_then_discarded_with_overwrite(
    dagm_train, tmp_path, good_cache
):
    root, options = dagm_train
    out = tmp_path / "dagm.h5"
    partial = tmp_path / "dagm.h5.partial"

    def stop_after_first_batch(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_features(
            "dagm", root, options, "efficientnet_lite0", out, batch_size=2, num_workers=0,
            on_batch=stop_after_first_batch,
        )  # fmt: skip
    with h5py.File(partial, "r") as f:
        assert f["done"][:].tolist() == [True, True, False, False, False]
    _flip(partial, "features", row=1, byte=3)
    with pytest.raises(DataonomyError, match=r"dagm.h5.partial: this interrupted extraction is damaged") as e:
        ensure_features("dagm", root, options, "efficientnet_lite0", out, batch_size=2, num_workers=0)
    assert "row 1" in str(e.value) and "delete it" in str(e.value) and not out.exists()
    # Rows not done yet hold nothing and are not checked; a damaged done row is, and --overwrite
    # discards the file and starts over.
    fs = ensure_features(
        "dagm", root, options, "efficientnet_lite0", out, batch_size=2, num_workers=0, overwrite=True
    )
    assert fs.extracted == 5 and not partial.exists()
    np.testing.assert_allclose(fs.features, load_features(good_cache).features, atol=1e-5)


def test_an_intact_resume_is_checked_and_kept(dagm_train, tmp_path, good_cache):
    root, options = dagm_train
    out = tmp_path / "dagm.h5"

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_features(
            "dagm", root, options, "efficientnet_lite0", out, batch_size=2, num_workers=0, on_batch=stop
        )
    fs = ensure_features("dagm", root, options, "efficientnet_lite0", out, batch_size=2, num_workers=0)
    assert fs.extracted == 3  # the first batch was checked and kept
    np.testing.assert_allclose(fs.features, load_features(good_cache).features, atol=1e-5)
    with h5py.File(out, "r") as f:
        assert f["row_sha256"].shape == (5, 32) and len(f.attrs["meta_sha256"]) == 64


def test_two_cold_cache_runs_at_once_both_succeed_with_one_cache(dagm_class1_test, tmp_path):
    # Two `dataonomy features` processes on one empty --cache-dir, 12 real DAGM images. The test holds
    # the cache's lock until both have started and are waiting, so the runs are sure to overlap; then
    # they race for it: one extracts, the other waits and reuses the finished cache.
    cache = tmp_path / "cache"
    cache.mkdir()
    options = reader_options(images_per_class=12, seed=0)
    out = feature_cache_path(cache, "dagm", dagm_class1_test, options, "efficientnet_lite0", "imagenet")
    lock = out.with_name(out.name + ".lock")
    argv = [
        sys.executable, "-m", "dataonomy.cli", "features", "--dataset", "dagm", "--root", str(dagm_class1_test),
        "--images-per-class", "12", "--backbone", "efficientnet_lite0", "--cache-dir", str(cache),
        "--num-workers", "0", "--device", "cpu", "--batch-size", "4",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    procs, logs = [], []
    try:
        for i in range(2):
            logs.append((tmp_path / f"out{i}.txt", tmp_path / f"err{i}.txt"))
            with open(logs[-1][0], "w") as o, open(logs[-1][1], "w") as e:
                procs.append(subprocess.Popen(argv, stdout=o, stderr=e, env=env))
        deadline = time.monotonic() + 300
        while not all("waiting for" in e.read_text() for _, e in logs):
            assert all(p.poll() is None for p in procs), [e.read_text() for _, e in logs]
            assert time.monotonic() < deadline, "the runs did not wait on the lock"
            time.sleep(0.2)
    finally:
        os.close(fd)  # releases the lock; the file stays, as a crashed holder would leave it
    codes = [p.wait(timeout=300) for p in procs]
    outs = [o.read_text() for o, _ in logs]
    errs = [e.read_text() for _, e in logs]
    assert codes == [0, 0], errs
    for err in errs:
        assert err.count("waiting for") == 1 and f"waiting for {out} (another run is writing it)" in err
        assert "Traceback" not in err
    assert sorted(("extracted 12 here" in o, "reused the complete cache" in o) for o in outs) == [
        (False, True),
        (True, False),
    ]
    assert sorted(p.name for p in cache.iterdir()) == [out.name]  # no partial, no lock file left
    fs = load_features(out)
    assert len(fs) == 12 and np.isfinite(fs.features).all()
