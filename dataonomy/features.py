"""Feature extraction and the HDF5 feature cache (METHOD.md section 1).

:func:`extract_features` is the pure part: a backbone and a dataset in, batches of (indices,
features, logits) out. The rest keeps those batches in a cache file, one per (dataset, backbone,
weights, preprocessing):

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

The file is written as ``<out>.partial`` and renamed to ``<out>`` only when every image is done, so a
file at ``<out>`` is always complete. Rerunning after an interruption (Ctrl-C, SIGTERM, a crash)
continues with the images not done yet; a partial file made for other inputs is refused (or
discarded with ``overwrite``); a complete file with the same fingerprint is reused without
computation, without even loading the weights. Creating a cache holds an exclusive lock on
``<out>.lock``, so a second run on the same file waits for the first and then reuses its cache.

Under ``torchrun`` (``WORLD_SIZE`` > 1) rank k extracts images k, k + W, ... into
``<out>.rank<k>.partial`` (resumable the same way); after all ranks are done, rank 0 merges the shards
into ``<out>``. The ranks only exchange done/failed flags (gloo), so the output folder must be shared
between nodes.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

import dataonomy
from dataonomy.backbones import Backbone, describe_backbone, get_backbone
from dataonomy.datasets.options import open_dataset
from dataonomy.devices import resolve_device
from dataonomy.errors import BadImageError, DataonomyError
from dataonomy.io import atomic_path, check_writable, make_dirs
from dataonomy.manifest import fingerprint_json

# /2: row and metadata checksums (a /1 cache has none, so it is refused as made for other inputs).
FORMAT = "dataonomy-features/2"
STORAGE_DTYPES = ("float32", "float16")
#: Row blocks for copying shards and reading caches: bounded memory for any N.
_BLOCK_ROWS = 8192


# --- pure extraction ----------------------------------------------------------------------------


class FeatureBatch(NamedTuple):
    """One batch of :func:`extract_features`: dataset ``indices`` (B,), ``features`` (B, D) float32,
    ``logits`` (B, C) float32 or None."""

    indices: np.ndarray
    features: np.ndarray
    logits: np.ndarray | None


class _BackboneInputs(Dataset):
    """``dataset[indices[i]]`` through the backbone's loader transform, with the index; a bad image is
    passed on as its message (a worker's exception would reach the user wrapped in a traceback)."""

    def __init__(self, dataset, indices: np.ndarray, transform: Callable):
        self.dataset, self.indices, self.transform = dataset, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = int(self.indices[i])
        try:
            image, _ = self.dataset[index]
        except BadImageError as exc:
            return None, index, str(exc)
        return self.transform(image), index, None


def _collate(items):
    for _, _, error in items:
        if error is not None:
            return None, None, error
    return torch.stack([x for x, _, _ in items]), torch.tensor([i for _, i, _ in items]), None


def default_num_workers(device: str | torch.device = "auto") -> int:
    """Loader workers per process: the CPUs of this process's share of the node (less one for the
    main process), up to 16 on CUDA; at most 2 on CPU, where the network competes for the cores."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    on_cuda = resolve_device(device).type == "cuda"
    return max(0, min(16 if on_cuda else 2, share - 1))


def extract_features(
    backbone: Backbone,
    dataset,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
) -> Iterator[FeatureBatch]:
    """Embed ``dataset`` (a reader returning ``(PIL image, target)``) with ``backbone``, batch by batch.

    ``indices`` restricts and orders the images (default: all, in order); ``device`` moves the
    backbone first (default: where it is). Images are decoded, resized and cropped to uint8 in
    ``num_workers`` loader processes (pinned memory on CUDA) and normalised on the device; on CUDA the
    next batch is queued on the GPU before the previous one is handed out, so writing it overlaps
    compute. A bad image raises :class:`BadImageError` naming the file.
    """
    if getattr(dataset, "transform", None) is not None:
        raise ValueError("extract_features applies the backbone's transform: pass a dataset without one")
    if batch_size < 1:
        raise DataonomyError(f"--batch-size {batch_size}: must be at least 1")
    if device is not None:
        backbone.to(device)
    order = (
        np.arange(len(dataset), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    )
    if order.size == 0:
        return
    on_cuda = backbone.device.type == "cuda"
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels once
    num_batches = -(-order.size // batch_size)
    workers = max(0, min(int(num_workers), num_batches))
    loader = DataLoader(
        _BackboneInputs(dataset, order, backbone.uint8_transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=on_cuda,
        prefetch_factor=4 if workers else None,
    )
    pending = None
    for images, batch_indices, error in loader:
        if error is not None:
            raise BadImageError(f"{error} (pass --skip-bad to check every file first and skip bad ones)")
        features, logits = backbone.extract(images)
        if not on_cuda:
            yield FeatureBatch(
                batch_indices.numpy(), features.numpy(), None if logits is None else logits.numpy()
            )
            continue
        # Asynchronous copies into pinned host memory; the event marks when they have landed.
        host = (
            batch_indices,
            features.to("cpu", non_blocking=True),
            None if logits is None else logits.to("cpu", non_blocking=True),
        )
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(backbone.device))  # the backbone's GPU, not the current one
        if pending is not None:
            yield _landed(*pending)
        pending = (host, done)
    if pending is not None:
        yield _landed(*pending)


def _landed(host, event) -> FeatureBatch:
    event.synchronize()
    idx, features, logits = host
    return FeatureBatch(idx.numpy(), features.numpy(), None if logits is None else logits.numpy())


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


def _create_cache_file(
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


def _open_for_update(
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


def _append_run(f: h5py.File, run: dict) -> None:
    runs = json.loads(f.attrs.get("runs", "[]"))
    f.attrs["runs"] = json.dumps([*runs, run])


@contextmanager
def _sigterm_as_interrupt():
    """Turn SIGTERM (``kill``, torchrun stopping its workers) into KeyboardInterrupt while extracting,
    so the partial file is flushed and closed on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True)
class ExtractionRequest:
    """How to extract (not what): the settings that travel together from :func:`ensure_features` down to
    :func:`fill_partial`. ``weights``/``device`` build a backbone given by name; ``num_workers`` None: the
    device's default; ``overwrite_option`` names the caller's option that sets ``overwrite`` (for advice);
    ``log`` says that this process waits for another's lock (default stderr)."""

    weights: str | Path = "imagenet"
    device: str | torch.device = "auto"
    batch_size: int = 64
    num_workers: int | None = None
    dtype: str = "float32"
    overwrite: bool = False
    progress: bool = True
    on_batch: Callable[[int, int], None] | None = None
    overwrite_option: str | None = None
    log: Callable[[str], None] | None = None


def fill_partial(
    path: Path,
    dataset,
    backbone_factory: Callable[[], Backbone],
    provenance: dict,
    shard: tuple[int, int] = (0, 1),
    request: ExtractionRequest = ExtractionRequest(),
) -> int:
    """Create or resume ``path`` (the rows of ``shard`` = (rank, world_size)) and extract what is not done.

    The backbone is built (``backbone_factory()``) only if there is work left. Every batch is written
    and flushed before ``request.on_batch(done, total)`` is called. Returns the number of images extracted.
    ``request.num_workers`` None reads in this process (:func:`ensure_features` resolves None first).
    """
    rank, world = shard
    indices = np.arange(rank, len(dataset), world, dtype=np.int64)
    description = provenance["backbone"]
    f = _open_for_update(path, provenance, shard, request.overwrite, request.overwrite_option)
    if f is not None:
        with f:
            if f["done"][:].all():
                return 0
    elif indices.size == 0:  # more ranks than images
        _create_cache_file(
            path, dataset, indices, provenance, description["feature_dim"], description["num_logits"], shard
        )
        return 0
    # The network is built before any file is created, so that missing weights leave nothing behind.
    backbone = backbone_factory()
    if backbone.describe() != description:
        raise ValueError(f"backbone {backbone.describe()} does not match the provenance {description}")
    if f is None:
        _create_cache_file(
            path, dataset, indices, provenance, description["feature_dim"], description["num_logits"], shard
        )
    with h5py.File(path, "r+") as f, _sigterm_as_interrupt():
        return _extract_missing_rows(
            f, backbone, dataset, indices, shard, request, provenance["storage_dtype"]
        )


def _extract_missing_rows(
    f: h5py.File,
    backbone: Backbone,
    dataset,
    indices: np.ndarray,
    shard: tuple[int, int],
    request: ExtractionRequest,
    dtype: str,
) -> int:
    """Extract the rows of ``indices`` not yet done in the open cache ``f``, batch by batch; record the run."""
    rank, world = shard
    done = f["done"][:]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    bar = tqdm(
        total=len(indices),
        initial=int(done.sum()),
        desc=f"features {backbone.name}" + (f" rank {rank}/{world}" if world > 1 else ""),
        unit="img",
        disable=not request.progress or rank != 0,
    )
    extracted = 0
    try:
        batches = extract_features(
            backbone, dataset, request.batch_size, request.num_workers or 0, indices=indices[~done]
        )
        for batch in batches:
            positions = (batch.indices - rank) // world
            _write_batch(f, positions, batch, dtype)
            extracted += len(positions)
            bar.update(len(positions))
            if request.on_batch is not None:
                request.on_batch(int(done.sum()) + extracted, len(indices))
    finally:
        bar.close()
        _append_run(
            f,
            {
                "started": started,
                "device": str(backbone.device),
                "precision": backbone.precision,
                "rank": rank,
                "world_size": world,
                "images": extracted,
            },
        )
    return extracted


def _write_batch(f: h5py.File, positions: np.ndarray, batch, dtype: str) -> None:
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


def _finalize(partial: Path, out: Path) -> None:
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
    _create_cache_file(
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
    _finalize(partial, out)
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


# --- torchrun -----------------------------------------------------------------------------------


class _Ranks:
    """This process's rank and world size; joins a gloo group under torchrun (only flags travel)."""

    def __init__(self):
        self.created = False
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank = int(os.environ.get("RANK", 0))
            self.world = int(os.environ.get("WORLD_SIZE", 1))
            if self.world > 1:
                # A long timeout: a rank resuming a nearly done shard waits for one starting from scratch.
                dist.init_process_group("gloo", timeout=timedelta(hours=12))
                self.created = True

    def all_ok(self, ok: bool) -> bool:
        """True when every rank passes ``ok=True`` (a barrier that also carries failures)."""
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def close(self) -> None:
        if self.created:
            dist.destroy_process_group()


def _run_everywhere(ranks: _Ranks, step: Callable[[], Any], only_rank0: bool, failed_elsewhere: str):
    """Run ``step`` (on rank 0 only if asked), then agree across ranks on whether it worked everywhere."""
    result, error = None, None
    try:
        if not only_rank0 or ranks.rank == 0:
            result = step()
    except BaseException as exc:  # re-raised below, after the other ranks have heard of it
        error = exc
    ok = ranks.all_ok(error is None)
    if error is not None:
        raise error
    if not ok:
        raise DataonomyError(failed_elsewhere)
    return result


# --- the entry point ----------------------------------------------------------------------------


def feature_cache_path(
    cache_dir: Path, dataset: str, root: Path, options: dict, backbone: str, weights: str
) -> Path:
    """The one naming rule of feature caches, used by `dataonomy features` and `dataonomy select` alike.

    One file per (dataset, root, reader options, backbone, weights): a readable name plus a short hash.
    ``options`` are :func:`~dataonomy.datasets.options.reader_options` (unset ones dropped, so a command
    that does not set an option names the same file as one that leaves it at its default).
    """
    key = fingerprint_json(
        {
            "dataset": dataset,
            "root": str(Path(root).resolve()),
            "options": options,
            "backbone": backbone,
            "weights": str(weights),
        }
    )[:12]
    return Path(cache_dir) / f"{dataset}-{Path(root).name}-{backbone}-{key}.h5"


def ensure_features(
    dataset_name: str,
    root: str | Path,
    dataset_options: dict[str, Any] | None,
    backbone: Backbone | str,
    out: str | Path,
    request: ExtractionRequest | None = None,
    *,
    dataset=None,
    **settings,
) -> FeatureSet:
    """The features of a dataset in the cache ``out``: reused when complete, else extracted or resumed.

    How to extract is ``request`` (an :class:`ExtractionRequest`), or its fields given as keywords
    (``weights=``, ``device=``, ``batch_size=``, ``num_workers=``, ``dtype=``, ``overwrite=``, ``progress=``,
    ``on_batch=``, ``overwrite_option=``, ``log=``), which override the request's.
    ``backbone`` is a :class:`Backbone` or a registered name (then built from ``weights`` on
    ``device`` only if something needs computing). ``dataset_options`` go to ``open_dataset``.
    ``overwrite`` replaces a complete or partial cache made for other inputs instead of refusing.
    Under torchrun each rank extracts its shard and rank 0 merges them; every rank returns the set.
    ``dataset``: the reader already opened from (``dataset_name``, ``root``, ``dataset_options``), so that a
    caller that checked its inputs first does not list a large pool twice.

    A cache made for other inputs, or damaged (unreadable, truncated, failing a checksum), is refused
    with advice for the caller's command: ``overwrite_option`` names its option that sets ``overwrite``
    (``dataonomy features --overwrite``); without one the advice is to delete the file. While this
    process creates the cache it holds ``<out>.lock``; another process waits there (saying so once
    through ``log``, default stderr) and then reuses the finished cache.
    """
    request = dataclasses.replace(request or ExtractionRequest(), **settings)
    out = Path(out)
    _check_request(request, out)
    if dataset is None:
        dataset = open_dataset(dataset_name, root, **(dataset_options or {}))
    description, build = _backbone_builder(backbone, request)
    provenance = feature_provenance(
        dataset_name, root, dataset_options, dataset.samples, description, request.dtype
    )
    reused = _reusable(out, provenance, request.overwrite, request.overwrite_option)
    if reused is not None:
        return reused
    check_writable(out)  # before the extraction, which can take hours
    make_dirs(out.parent, "--out")  # the lock file goes beside the cache
    if request.num_workers is None:
        device = backbone.device if isinstance(backbone, Backbone) else request.device
        request = dataclasses.replace(request, num_workers=default_num_workers(device))
    extracted = _extract_cache(out, dataset, build, provenance, request)
    if isinstance(extracted, FeatureSet):  # another run finished the cache while this one waited
        return extracted
    features = load_features(out, request.overwrite_option)
    features.extracted = extracted
    return features


def _check_request(request: ExtractionRequest, out: Path) -> None:
    """One-line errors for settings no extraction can run with, before anything is read."""
    if request.dtype not in STORAGE_DTYPES:
        raise DataonomyError(f"--dtype {request.dtype}: must be one of {', '.join(STORAGE_DTYPES)}")
    if request.batch_size < 1:
        raise DataonomyError(f"--batch-size {request.batch_size}: must be at least 1")
    if request.num_workers is not None and request.num_workers < 0:
        raise DataonomyError(f"--num-workers {request.num_workers}: must be 0 or more")
    if out.suffix == ".partial":
        raise DataonomyError(f"--out {out}: the .partial suffix is reserved for interrupted extractions")
    if out.is_dir():
        raise DataonomyError(f"--out {out}: is a folder, expected a file name such as features.h5")


def _backbone_builder(
    backbone: Backbone | str, request: ExtractionRequest
) -> tuple[dict, Callable[[], Backbone]]:
    """The backbone's description, and a function that builds it (by name: only when called)."""
    if isinstance(backbone, Backbone):
        return backbone.describe(), lambda: backbone
    description = describe_backbone(backbone, request.weights)

    def build() -> Backbone:
        return get_backbone(backbone, request.weights, device=request.device, progress=request.progress)

    return description, build


def _extract_cache(
    out: Path, dataset, build: Callable[[], Backbone], provenance: dict, request: ExtractionRequest
) -> int | FeatureSet:
    """Extract (or resume) ``out``: alone under its lock, or a shard a rank under torchrun with rank 0
    merging. The number of images extracted here, or the cache another run finished meanwhile."""
    partial = out.with_name(out.name + ".partial")
    ranks = _Ranks()
    try:
        shard = (ranks.rank, ranks.world)
        own = partial if ranks.world == 1 else out.with_name(f"{out.name}.rank{ranks.rank}.partial")

        def fill() -> int:
            return fill_partial(own, dataset, build, provenance, shard, request)

        if ranks.world == 1:
            with _exclusive(out, request.log or _to_stderr):
                # Another run may have finished (or replaced) the cache while this one waited.
                reused = _reusable(out, provenance, request.overwrite, request.overwrite_option)
                if reused is not None:
                    return reused
                extracted = fill()
                _finalize(partial, out)
            return extracted
        # Ranks of one job write separate shard files and meet in all_reduce, so no file lock here
        # (ranks waiting on each other's lock would deadlock); one job per cache at a time.
        extracted = _run_everywhere(
            ranks, fill, False, "another rank failed; this rank's finished rows are kept for a rerun"
        )
        shards = [out.with_name(f"{out.name}.rank{k}.partial") for k in range(ranks.world)]
        _run_everywhere(
            ranks,
            lambda: merge_shards(shards, dataset, provenance, partial, out),
            True,
            "rank 0 could not merge the shards (see its error); the shard files are kept",
        )
        return extracted
    finally:
        ranks.close()


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _reusable(
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
def _exclusive(out: Path, log: Callable[[str], None]) -> Iterator[None]:
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
