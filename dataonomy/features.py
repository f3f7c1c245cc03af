"""Feature extraction (METHOD.md section 1): a backbone over a dataset, into the feature cache.

:func:`extract_features` is the pure part: a backbone and a dataset in, batches of (indices, features,
logits) out. :func:`ensure_features` is the entry point: it reuses the cache made for these inputs
(:mod:`dataonomy.feature_store`, one HDF5 file per dataset, backbone, weights and preprocessing) or fills it.

Rerunning after an interruption (Ctrl-C, SIGTERM, a crash) continues with the images not done yet; a partial
file made for other inputs is refused (or discarded with ``overwrite``); a complete file with the same
fingerprint is reused without computation, without even loading the weights. A second run on the same file
waits for the first (its lock) and then reuses its cache.

Under ``torchrun`` (``WORLD_SIZE`` > 1) rank k extracts images k, k + W, ... into
``<out>.rank<k>.partial`` (resumable the same way); after all ranks are done, rank 0 merges the shards
into ``<out>``. The ranks only exchange done/failed flags (gloo, :class:`dataonomy.processes.Processes`), so
the output folder must be shared between nodes.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dataonomy.backbones import Backbone, describe_backbone, get_backbone
from dataonomy.datasets.options import open_dataset
from dataonomy.devices import resolve_device
from dataonomy.errors import BadImageError, DataonomyError
from dataonomy.feature_store import (
    STORAGE_DTYPES,
    FeatureSet,
    append_run,
    create_cache_file,
    exclusive_lock,
    feature_provenance,
    finalize,
    load_features,
    merge_shards,
    open_for_update,
    reusable_cache,
    write_batch,
)
from dataonomy.io import check_writable, make_dirs
from dataonomy.manifest import fingerprint_json
from dataonomy.processes import Processes
from dataonomy.progress import Counter

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
    f = open_for_update(path, provenance, shard, request.overwrite, request.overwrite_option)
    if f is not None:
        with f:
            if f["done"][:].all():
                return 0
    elif indices.size == 0:  # more ranks than images
        create_cache_file(
            path, dataset, indices, provenance, description["feature_dim"], description["num_logits"], shard
        )
        return 0
    # The network is built before any file is created, so that missing weights leave nothing behind.
    backbone = backbone_factory()
    if backbone.describe() != description:
        raise ValueError(f"backbone {backbone.describe()} does not match the provenance {description}")
    if f is None:
        create_cache_file(
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
    bar = Counter(
        len(indices),
        f"features {backbone.name}" + (f" rank {rank}/{world}" if world > 1 else ""),
        unit="image",
        initial=int(done.sum()),
        enabled=bool(request.progress) and rank == 0,
    )
    extracted = 0
    try:
        batches = extract_features(
            backbone, dataset, request.batch_size, request.num_workers or 0, indices=indices[~done]
        )
        for batch in batches:
            positions = (batch.indices - rank) // world
            write_batch(f, positions, batch, dtype)
            extracted += len(positions)
            bar.update(len(positions))
            if request.on_batch is not None:
                request.on_batch(int(done.sum()) + extracted, len(indices))
    finally:
        bar.close()
        append_run(
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
    reused = reusable_cache(out, provenance, request.overwrite, request.overwrite_option)
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
    ranks = Processes.from_env("cpu", timeout=timedelta(hours=12))
    try:
        shard = (ranks.rank, ranks.world_size)
        own = partial if ranks.world_size == 1 else out.with_name(f"{out.name}.rank{ranks.rank}.partial")

        def fill() -> int:
            return fill_partial(own, dataset, build, provenance, shard, request)

        if ranks.world_size == 1:
            with exclusive_lock(out, request.log or _to_stderr):
                # Another run may have finished (or replaced) the cache while this one waited.
                reused = reusable_cache(out, provenance, request.overwrite, request.overwrite_option)
                if reused is not None:
                    return reused
                extracted = fill()
                finalize(partial, out)
            return extracted
        # Ranks of one job write separate shard files and meet in all_reduce, so no file lock here
        # (ranks waiting on each other's lock would deadlock); one job per cache at a time.
        extracted = ranks.run_everywhere(
            fill, False, "another rank failed; this rank's finished rows are kept for a rerun"
        )
        shards = [out.with_name(f"{out.name}.rank{k}.partial") for k in range(ranks.world_size)]
        ranks.run_everywhere(
            lambda: merge_shards(shards, dataset, provenance, partial, out),
            True,
            "rank 0 could not merge the shards (see its error); the shard files are kept",
        )
        return extracted
    finally:
        ranks.close()


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
