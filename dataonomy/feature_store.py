"""The HDF5 feature cache (METHOD.md section 1): one file per (dataset, backbone, weights, preprocessing).

:mod:`dataonomy.features` extracts; this module keeps what it extracts, checks it and reads it back.

* ``features`` (N, D) float32 or float16, ``logits`` (N, 1000) where the backbone has an ImageNet head,
  ``done`` (N,) bool, and per image ``paths``, ``labels``, ``targets``, ``defects`` (1, 0, or -1 when
  the dataset does not say); ``classes``, ``class_names`` and ``imagenet_indices`` (-1 where none).
* attributes: ``provenance`` (JSON: dataset name/root/options and a hash of its sample list, backbone
  name, ``weights_id`` and preprocessing, storage dtype, code version), ``fingerprint`` (SHA-256 of
  the provenance), and, outside the fingerprint, ``created`` and ``runs`` (device, precision, ranks).
* checksums: ``row_sha256`` (N, 32) holds the SHA-256 of each row (its position, then its feature and
  logit bytes as stored), written with the row, so a resumed extraction checks only what it wrote; the
  ``meta_sha256`` attribute covers the per-image and per-class datasets. Every read of a cache (reuse,
  resume, merge) checks them: a damaged, truncated or foreign file is reported, never used.

The file is written as ``<out>.partial`` and renamed to ``<out>`` only when every image is done
(:func:`finalize`), so a file at ``<out>`` is always complete. Creating a cache holds an exclusive lock on
``<out>.lock`` (:func:`exclusive_lock`). Under ``torchrun`` each rank writes ``<out>.rank<k>.partial`` and
rank 0 joins them (:func:`merge_shards`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import dataonomy
from dataonomy.errors import DataonomyError
from dataonomy.io import atomic_path

# /2: row and metadata checksums (a /1 cache has none, so it is refused as made for other inputs).
FORMAT = "dataonomy-features/2"
STORAGE_DTYPES = ("float32", "float16")
#: Row blocks for copying shards and reading caches: bounded memory for any N.
_BLOCK_ROWS = 8192


# --- provenance ---------------------------------------------------------------------------------


def _jsonable(value):
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def canonical_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Dataset options as ``open_dataset`` uses them (unset ones dropped), JSON-able, paths absolute."""
    return {k: _jsonable(v) for k, v in sorted((options or {}).items()) if v is not None and v is not False}


def samples_digest(samples) -> str:
    """SHA-256 of a dataset's sample list (absolute path, label, target, defect per image, in order)."""
    digest = hashlib.sha256()
    for s in samples:
        digest.update(f"{os.path.abspath(s.path)}\t{s.label}\t{s.target}\t{s.defect}\n".encode())
    return digest.hexdigest()


def feature_provenance(
    dataset_name: str,
    root: str | Path,
    dataset_options: dict[str, Any] | None,
    samples,
    backbone_description: dict,
    dtype: str = "float32",
) -> dict:
    """Everything a cache's content depends on; its hash is the cache's fingerprint."""
    return {
        "format": FORMAT,
        "dataset": {
            "name": dataset_name,
            "root": str(Path(root).resolve()),
            "options": canonical_options(dataset_options),
            "num_samples": len(samples),
            "samples_sha256": samples_digest(samples),
        },
        "backbone": backbone_description,
        "storage_dtype": dtype,
        "code_version": dataonomy.__version__,
    }


def fingerprint(provenance: dict) -> str:
    return hashlib.sha256(json.dumps(provenance, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two provenance dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, name + ".")
        elif a != b:
            out.append(name)
    return out


def _mismatch(path: Path, stored: str | None, provenance: dict, what: str) -> str:
    try:
        diff = _differences(json.loads(stored), provenance) if stored else ["provenance (none stored)"]
    except json.JSONDecodeError:
        diff = ["provenance (unreadable)"]
    return f"{path}: {what} was made for other inputs (differs in: {', '.join(diff[:6]) or 'fingerprint'})"


def _remedy(overwrite_option: str | None) -> str:
    """What to do about a cache that cannot be used, in terms of the command the user ran."""
    if overwrite_option:
        return f"pass {overwrite_option} to extract the features again, or delete the file"
    return "delete the file and rerun to extract the features again"


# --- checksums ----------------------------------------------------------------------------------

#: Per-image and per-class datasets covered by the ``meta_sha256`` attribute, in hashing order.
_META = ("index", "paths", "labels", "targets", "defects", "classes", "class_names", "imagenet_indices")
#: What h5py raises on a file whose structure is damaged (besides a failed open).
_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, IndexError, RuntimeError)


class DamagedCacheError(DataonomyError):
    """A feature cache (or interrupted extraction) that cannot be read or fails its checksums."""


class _Damage(Exception):
    """Internal: what is wrong with a file, turned into a :class:`DamagedCacheError` by the caller."""


def _little(a: np.ndarray) -> np.ndarray:
    # Hash the bytes as stored (little-endian) whatever the host's order; no copy on usual hosts.
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))


def row_digests(positions: np.ndarray, features: np.ndarray, logits: np.ndarray | None) -> np.ndarray:
    """SHA-256 of each row as stored: its position in the file, its feature bytes, its logit bytes.

    ``features``/``logits`` hold the rows at ``positions`` in the storage dtype; returns (B, 32) uint8.
    The position is hashed too, so rows that trade places fail as well.
    """
    features = _little(features)
    logits = None if logits is None else _little(logits)
    out = np.empty((len(positions), 32), dtype=np.uint8)
    for i, position in enumerate(positions):
        h = hashlib.sha256(int(position).to_bytes(8, "little"))
        h.update(features[i])
        if logits is not None:
            h.update(logits[i])
        out[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return out


def _meta_digest(f: h5py.File) -> str:
    """SHA-256 over the per-image and per-class datasets, as read back from the file."""
    h = hashlib.sha256()
    for name in _META:
        if name not in f:
            continue
        data = f[name][:]
        h.update(f"{name}:{data.shape}\n".encode())
        if data.dtype.kind == "O":  # variable-length strings: length-prefixed bytes
            for value in data:
                raw = value if isinstance(value, bytes) else str(value).encode()
                h.update(len(raw).to_bytes(8, "little") + raw)
        else:
            h.update(_little(data).tobytes())
    return h.hexdigest()


def _check_header(f: h5py.File) -> None:
    """The fingerprint matches the stored provenance and the metadata its checksum (raises _Damage)."""
    try:
        consistent = fingerprint(json.loads(f.attrs["provenance"])) == f.attrs["fingerprint"]
    except (KeyError, ValueError, TypeError):
        consistent = False
    if not consistent:
        raise _Damage("its provenance does not match its fingerprint")
    if "meta_sha256" not in f.attrs or "row_sha256" not in f:
        raise _Damage("it has no checksums")
    if _meta_digest(f) != f.attrs["meta_sha256"]:
        raise _Damage("its image list fails its checksum")


def _check_rows(
    start: int, features: np.ndarray, logits: np.ndarray | None, stored: np.ndarray, paths=None
) -> None:
    """Rows ``start``, ``start + 1``, ... against their stored checksums (raises _Damage naming the first bad one)."""
    positions = np.arange(start, start + len(features), dtype=np.int64)
    bad = np.flatnonzero((row_digests(positions, features, logits) != stored).any(axis=1))
    if bad.size:
        first = int(positions[bad[0]])
        image = f", {paths[first]}" if paths is not None else ""
        raise _Damage(f"{bad.size} row(s) fail their checksum, the first is row {first}{image}")


def _check_done_rows(f: h5py.File) -> None:
    """Every row flagged done in a (partial or shard) file against its checksum, block by block."""
    done = f["done"][:]
    has_logits = "logits" in f
    for start in range(0, len(done), _BLOCK_ROWS):
        stop = min(len(done), start + _BLOCK_ROWS)
        rows = np.flatnonzero(done[start:stop])
        if rows.size == 0:
            continue
        last = start + int(rows[-1]) + 1
        features = f["features"][start:last]
        logits = f["logits"][start:last] if has_logits else None
        stored = f["row_sha256"][start:last]
        # Only the done rows: the others hold nothing yet (they are extracted on this resume).
        positions = start + rows
        digests = row_digests(positions, features[rows], None if logits is None else logits[rows])
        bad = np.flatnonzero((digests != stored[rows]).any(axis=1))
        if bad.size:
            raise _Damage(f"{bad.size} row(s) fail their checksum, the first is row {int(positions[bad[0]])}")


def _self_consistent(stored: str | None, stored_provenance: str | None) -> bool:
    """Whether a file's fingerprint is the hash of its own provenance (else an attribute is damaged)."""
    try:
        return stored is not None and fingerprint(json.loads(stored_provenance)) == stored
    except (TypeError, ValueError):
        return False


# --- the cache file -----------------------------------------------------------------------------


@dataclass
class FeatureSet:
    """A complete feature cache, read into memory (features keep their stored dtype).

    ``defects`` is 1/0 per image, -1 where the dataset does not say; ``imagenet_indices`` gives the
    ImageNet-1k index of each class (None where it has none), or is None for non-ImageNet datasets.
    ``extracted`` counts the images computed by the call that returned this set (0 for a reused cache).
    """

    path: Path
    features: np.ndarray
    logits: np.ndarray | None
    paths: list[str]
    labels: list[str]
    targets: np.ndarray
    defects: np.ndarray
    classes: list[str]
    class_names: list[str]
    imagenet_indices: list[int | None] | None
    provenance: dict
    attrs: dict = field(default_factory=dict)
    extracted: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def backbone(self) -> dict:
        return self.provenance["backbone"]


def _strings(values) -> np.ndarray:
    return np.array(list(values), dtype=h5py.string_dtype("utf-8"))


def create_cache_file(
    path: Path,
    dataset,
    indices: np.ndarray,
    provenance: dict,
    feature_dim: int,
    num_logits: int,
    shard: tuple[int, int],
) -> None:
    """An empty cache for ``dataset``'s samples ``indices`` (nothing done), created atomically."""
    samples = [dataset.samples[i] for i in indices]
    n = len(samples)
    dtype = provenance["storage_dtype"]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
        f.attrs["fingerprint"] = fingerprint(provenance)
        f.attrs["shard_rank"], f.attrs["shard_world_size"] = shard
        f.attrs["runs"] = "[]"
        f.create_dataset("features", (n, feature_dim), dtype=dtype)
        if num_logits:
            f.create_dataset("logits", (n, num_logits), dtype=dtype)
        f.create_dataset("done", (n,), dtype=bool, fillvalue=False)
        # Contiguous and fixed in size like the rows it covers: writing a row's checksum changes no
        # HDF5 structure, so a kill mid-batch cannot damage the file's metadata.
        f.create_dataset("row_sha256", (n, 32), dtype=np.uint8)
        f.create_dataset("index", data=indices.astype(np.int64))
        f.create_dataset("paths", data=_strings(os.path.abspath(s.path) for s in samples))
        f.create_dataset("labels", data=_strings(s.label for s in samples))
        f.create_dataset("targets", data=np.array([s.target for s in samples], dtype=np.int64))
        defects = [-1 if s.defect is None else int(s.defect) for s in samples]
        f.create_dataset("defects", data=np.array(defects, dtype=np.int8))
        f.create_dataset("classes", data=_strings(dataset.classes))
        f.create_dataset("class_names", data=_strings(getattr(dataset, "class_names", dataset.classes)))
        inet = getattr(dataset, "imagenet_indices", None)
        if inet is not None:
            f.create_dataset(
                "imagenet_indices", data=np.array([-1 if i is None else i for i in inet], dtype=np.int64)
            )
        f.attrs["meta_sha256"] = _meta_digest(f)


def open_for_update(
    path: Path, provenance: dict, shard: tuple[int, int], overwrite: bool, overwrite_option: str | None = None
) -> h5py.File | None:
    """Open an existing partial file to resume it, or return None when there is none to resume.

    A partial made for other inputs or for another shard layout, unreadable, or whose done rows fail
    their checksums is refused, or with ``overwrite`` removed so that extraction starts over.
    """
    if not path.exists():
        return None
    remedy = (
        f"pass {overwrite_option} to discard it and start again, or delete it"
        if overwrite_option
        else "delete it and rerun to start the extraction again"
    )
    try:
        f = h5py.File(path, "r+")
    except OSError as exc:
        if overwrite:
            path.unlink()
            return None
        if isinstance(exc, BlockingIOError) or "unable to lock file" in str(exc):
            # Runs of one process each wait on <out>.lock; this is a writer that did not (torchrun jobs).
            raise DataonomyError(
                f"{path}: another process is writing this interrupted extraction; wait for it to finish"
            ) from None
        raise DamagedCacheError(
            f"{path}: this interrupted extraction is damaged (not a readable HDF5 file: {exc}); {remedy}"
        ) from None
    problem = None
    try:
        if f.attrs.get("fingerprint") != fingerprint(provenance):
            if _self_consistent(f.attrs.get("fingerprint"), f.attrs.get("provenance")):
                problem = _mismatch(
                    path, f.attrs.get("provenance"), provenance, "this interrupted extraction"
                )
            else:
                raise _Damage("its provenance does not match its fingerprint")
        elif (int(f.attrs.get("shard_rank", -1)), int(f.attrs.get("shard_world_size", -1))) != shard:
            problem = (
                f"{path}: this interrupted extraction is shard {f.attrs.get('shard_rank')} of "
                f"{f.attrs.get('shard_world_size')}, this run needs shard {shard[0]} of {shard[1]}"
            )
        else:
            _check_header(f)
            _check_done_rows(f)
    except (_Damage, *_READ_ERRORS) as exc:
        problem = f"{path}: this interrupted extraction is damaged ({exc})"
    if problem is None:
        return f
    f.close()
    if overwrite:
        path.unlink()
        return None
    raise DataonomyError(f"{problem}; {remedy}")


def _write_rows(dset: h5py.Dataset, positions: np.ndarray, values: np.ndarray) -> None:
    """``dset[positions] = values`` for increasing positions; one slice where they are contiguous."""
    if positions[-1] - positions[0] + 1 == len(positions):
        dset[positions[0] : positions[-1] + 1] = values
    else:
        dset[positions] = values


def append_run(f: h5py.File, run: dict) -> None:
    runs = json.loads(f.attrs.get("runs", "[]"))
    f.attrs["runs"] = json.dumps([*runs, run])


def write_batch(f: h5py.File, positions: np.ndarray, batch, dtype: str) -> None:
    """One batch's values, checksums and, last, done flags into ``f``, each flushed."""
    features = batch.features.astype(dtype, copy=False)
    logits = None if batch.logits is None else batch.logits.astype(dtype, copy=False)
    _write_rows(f["features"], positions, features)
    if logits is not None:
        _write_rows(f["logits"], positions, logits)
    # Checksums of the values as computed (not as read back), so damage on disk shows.
    _write_rows(f["row_sha256"], positions, row_digests(positions, features, logits))
    f.flush()
    # Flags last: a row counts as done only once its values are in the file.
    _write_rows(f["done"], positions, np.ones(len(positions), dtype=bool))
    f.flush()


def finalize(partial: Path, out: Path) -> None:
    """Stamp a fully done partial file and rename it to ``out`` (atomic on POSIX)."""
    with h5py.File(partial, "r+") as f:
        if not f["done"][:].all():
            raise RuntimeError(f"{partial}: not every image is done")
        for key in ("shard_rank", "shard_world_size"):
            f.attrs.pop(key, None)
        f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    os.replace(partial, out)


def _checked_shard_rows(shard_path: Path, rank: int, expected: str, runs: list) -> Iterator[tuple]:
    """A finished shard's rows, block by block, each checked against its checksums: (start, features,
    logits). Its runs are appended to ``runs``. Read problems are reported as a damaged shard (only
    reads happen here, so a failed write in the caller is not mistaken for one)."""
    try:
        with h5py.File(shard_path, "r") as src:
            if src.attrs.get("fingerprint") != expected or not src["done"][:].all():
                raise DataonomyError(f"{shard_path}: shard {rank} is incomplete or for other inputs")
            _check_header(src)
            runs += json.loads(src.attrs.get("runs", "[]"))
            n = src["index"].shape[0]
            for start in range(0, n, _BLOCK_ROWS):
                stop = min(n, start + _BLOCK_ROWS)
                features = src["features"][start:stop]
                logits = src["logits"][start:stop] if "logits" in src else None
                _check_rows(start, features, logits, src["row_sha256"][start:stop])
                yield start, features, logits
    except (_Damage, *_READ_ERRORS) as exc:
        raise DamagedCacheError(
            f"{shard_path}: shard {rank} is damaged ({exc}); delete it and rerun to extract it again"
        ) from None


def merge_shards(shard_paths: Sequence[Path], dataset, provenance: dict, partial: Path, out: Path) -> None:
    """Rank 0's step: copy every rank's rows (rank k holds images k, k + W, ...) into one cache at ``out``."""
    world = len(shard_paths)
    description = provenance["backbone"]
    create_cache_file(
        partial,
        dataset,
        np.arange(len(dataset), dtype=np.int64),
        provenance,
        description["feature_dim"],
        description["num_logits"],
        (0, 1),
    )
    runs = []
    with h5py.File(partial, "r+") as dst:
        for rank, shard_path in enumerate(shard_paths):
            for start, features, logits in _checked_shard_rows(
                shard_path, rank, dst.attrs["fingerprint"], runs
            ):
                positions = np.arange(
                    rank + world * start, rank + world * (start + len(features) - 1) + 1, world
                )
                rows = slice(int(positions[0]), int(positions[-1]) + 1, world)
                dst["features"][rows] = features
                if logits is not None:
                    dst["logits"][rows] = logits
                # Re-hashed for their place in the merged file, from the values just checked.
                dst["row_sha256"][rows] = row_digests(positions, features, logits)
        dst["done"][:] = True
        dst.attrs["runs"] = json.dumps(runs)
    finalize(partial, out)
    for shard_path in shard_paths:
        shard_path.unlink()


def load_features(path: str | Path, overwrite_option: str | None = None) -> FeatureSet:
    """Read a complete feature cache, checking every checksum; a missing, foreign or incomplete file is a
    one-line error, and a damaged one (unreadable, truncated, failing a checksum) a one-line
    :class:`DamagedCacheError` saying what to do (``overwrite_option``: the caller's option that
    replaces the file; without it, the advice is to delete the file)."""
    path = Path(path)
    if not path.is_file():
        partial = path.with_name(path.name + ".partial")
        hint = (
            f" ({partial.name} exists: the extraction was interrupted; rerun it)" if partial.exists() else ""
        )
        raise DataonomyError(f"{path}: feature cache not found{hint}")
    damaged = f"{path}: feature cache is damaged"
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DamagedCacheError(
            f"{damaged} (not a readable HDF5 file: {exc}); {_remedy(overwrite_option)}"
        ) from None
    try:
        with f:
            return _read_complete(f, path, overwrite_option)
    except _Damage as exc:
        raise DamagedCacheError(f"{damaged} ({exc}); {_remedy(overwrite_option)}") from None
    except _READ_ERRORS as exc:
        raise DamagedCacheError(f"{damaged} (unreadable: {exc}); {_remedy(overwrite_option)}") from None


def _read_complete(f: h5py.File, path: Path, overwrite_option: str | None) -> FeatureSet:
    fmt = f.attrs.get("format")
    if fmt != FORMAT:
        if isinstance(fmt, str) and fmt.startswith("dataonomy-features/"):
            raise DataonomyError(
                f"{path}: feature cache in format {fmt!r}, this version reads {FORMAT!r}; "
                f"{_remedy(overwrite_option)}"
            )
        raise DataonomyError(f"{path}: not a dataonomy feature cache (format {fmt!r})")
    done = f["done"][:]
    if "shard_rank" in f.attrs:  # partial and shard files carry it until they are finished
        raise DataonomyError(f"{path}: incomplete feature cache (an interrupted extraction); rerun it")
    if not done.all():  # a finished file had every row done when it was renamed into place
        raise _Damage(f"{int((~done).sum())} row(s) are flagged not done")
    _check_header(f)
    features = f["features"][:]
    logits = f["logits"][:] if "logits" in f else None
    paths = f["paths"].asstr()[:].tolist()
    if not (len(features) == len(paths) == len(done) and (logits is None or len(logits) == len(paths))):
        raise _Damage("its datasets disagree on the number of images")
    _check_rows(0, features, logits, f["row_sha256"][:], paths)
    inet = f["imagenet_indices"][:].tolist() if "imagenet_indices" in f else None
    return FeatureSet(
        path=path,
        features=features,
        logits=logits,
        paths=paths,
        labels=f["labels"].asstr()[:].tolist(),
        targets=f["targets"][:],
        defects=f["defects"][:],
        classes=f["classes"].asstr()[:].tolist(),
        class_names=f["class_names"].asstr()[:].tolist(),
        imagenet_indices=None if inet is None else [None if i < 0 else i for i in inet],
        provenance=json.loads(f.attrs["provenance"]),
        attrs={k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()},
    )


def stored_fingerprint(path: Path) -> tuple[str | None, str | None]:
    """(fingerprint, provenance JSON) of a cache file, (None, None) when unreadable."""
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("fingerprint"), f.attrs.get("provenance")
    except OSError:
        return None, None


def reusable_cache(
    out: Path, provenance: dict, overwrite: bool, overwrite_option: str | None
) -> FeatureSet | None:
    """The complete cache at ``out`` if it was made for these inputs and passes its checksums; None when
    there is none, or when ``overwrite`` says to replace it. Otherwise a one-line error: made for other
    inputs, or damaged."""
    if not out.exists():
        return None
    expected = fingerprint(provenance)
    stored, stored_provenance = stored_fingerprint(out)
    try:
        if stored != expected and _self_consistent(stored, stored_provenance):
            advice = (
                f"pass {overwrite_option} to replace it, or choose another --out"
                if overwrite_option
                else "delete it and rerun to extract the features again"
            )
            raise DataonomyError(
                _mismatch(out, stored_provenance, provenance, "the existing feature cache") + f"; {advice}"
            )
        # Same inputs, or attributes that cannot be read or disagree with each other: a full read
        # says which (damaged, not a cache, incomplete) or, if all is well, returns the set.
        features = load_features(out, overwrite_option)
        if features.attrs.get("fingerprint") != expected:
            raise DataonomyError(_mismatch(out, stored_provenance, provenance, "the existing feature cache"))
        return features
    except DataonomyError:
        if overwrite:
            return None
        raise


@contextmanager
def exclusive_lock(out: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<out>.lock`` while this process creates ``out``.

    A second run on the same cache waits here (saying so once) instead of failing on the HDF5 file
    the first one is writing. The lock file is removed on release; a waiter that then holds a lock on
    the removed file tries again on a fresh one, so two runs never both hold it.
    """
    lock = out.with_name(out.name + ".lock")
    said = False
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise DataonomyError(
                f"{lock}: cannot create the lock file beside the cache ({exc.strerror})"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not said:
                    log(f"waiting for {out} (another run is writing it)")
                    said = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                # A file system without locks: go on unlocked, as before locking existed.
                yield
                return
            raise
        except BaseException:
            os.close(fd)
            raise
        try:
            mine, now = os.fstat(fd), os.stat(lock)
            held = (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)
        except FileNotFoundError:
            held = False
        if held:
            break
        os.close(fd)
    try:
        yield
    finally:
        # Removed while still held (see above), so no lock file is left beside the cache.
        try:
            lock.unlink()
        except FileNotFoundError:
            pass
        os.close(fd)
