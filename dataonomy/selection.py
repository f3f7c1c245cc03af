"""``dataonomy select`` as a function: features -> affinity -> AHP -> BIP -> manifest + taxonomy.

:class:`SelectConfig` holds every parameter (its fields are :func:`run_selection`'s arguments, and it
is saved in the manifest); each stage is one call into its own module, so this file shows the whole
data flow and nothing else.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataonomy import __version__
from dataonomy.affinity import AffinityInputs, class_affinity, get_affinity, per_image_scores
from dataonomy.ahp import ahp_normalize
from dataonomy.backbones import resolve_backbone
from dataonomy.bip import SelectionProblem, SelectionResult, precheck_selection, solve_selection
from dataonomy.datasets import list_datasets
from dataonomy.datasets.options import open_dataset, reader_options
from dataonomy.devices import resolve_device
from dataonomy.errors import DataonomyError
from dataonomy.feature_store import FeatureSet
from dataonomy.features import ExtractionRequest, ensure_features, feature_cache_path
from dataonomy.io import check_writable
from dataonomy.manifest import SCHEMA, fingerprint_files, fingerprint_json, validate_manifest, write_manifest
from dataonomy.select_config import SelectConfig, read_wnids
from dataonomy.taxonomy import export_graph, graph_from_manifest
from dataonomy.wordnet import imagenet_classes, imagenet_index, load_wordnet


@dataclass
class SelectionRun:
    """What :func:`run_selection` returns: the manifest, the solver result, and the run report."""

    manifest: dict
    result: SelectionResult
    source_classes: list[str]
    target_classes: list[str]
    affinity: np.ndarray  # AHP-normalised, (targets, sources): what the programme maximised
    raw_affinity: np.ndarray
    consistency: np.ndarray
    report: dict
    manifest_path: Path
    graph_path: Path


def _target_groups(labels: list[str]) -> tuple[list[str], np.ndarray]:
    classes = sorted(set(labels), key=lambda c: (len(c), c))  # Class2 before Class10
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.array([index[c] for c in labels], dtype=np.int64)


def diversity_groups(wnids: list[str], depth: int) -> dict[str, list[int]]:
    """WordNet node at ``depth`` -> indices of the source classes under it (a class may be under several)."""
    wn = load_wordnet()
    groups: dict[str, list[int]] = {}
    for i, w in enumerate(wnids):
        if w not in wn:
            continue
        # Sorted: a set's order changes with PYTHONHASHSEED, and the groups' order reaches the solver's rows
        # and the greedy violations, so an unsorted walk gave other bytes (or, with ties, another
        # selection) in another process.
        for node in sorted(wn.ancestors_at_depth(w, depth)):
            # Keyed by "wnid (name)" so solver messages say which group is over its cap.
            groups.setdefault(f"{node} ({wn.name(node)})", []).append(i)
    return groups


def read_class_list(path: Path, known: list[str], option: str) -> list[int]:
    """A file of wnids -> source indices; unknown wnids are an error."""
    index = {w: i for i, w in enumerate(known)}
    out = []
    for lineno, wnid in read_wnids(path, option):
        if wnid not in index:
            raise DataonomyError(f"{option} {path}:{lineno}: '{wnid}' is not a class of the source pool")
        out.append(index[wnid])
    return out


def _class_lists(cfg: SelectConfig, classes: list[str], names: list[str]) -> tuple[list[int], list[int]]:
    """--include / --exclude as source indices; a class in both is an error naming its wnid and files."""
    found = {}
    for option, files in (("--include", cfg.include), ("--exclude", cfg.exclude)):
        found[option] = {}
        for f in files:
            for i in read_class_list(f, classes, option):
                found[option].setdefault(i, f)
    both = sorted(set(found["--include"]) & set(found["--exclude"]))
    if both:
        i = both[0]
        raise DataonomyError(
            f"--include {found['--include'][i]} and --exclude {found['--exclude'][i]} both list {classes[i]}"
            f" ({names[i]})" + (f" and {len(both) - 1} more classes" if len(both) > 1 else "")
        )
    return sorted(found["--include"]), sorted(found["--exclude"])


def check_options(cfg: SelectConfig) -> None:
    """Every check that needs no dataset: a bad option fails here, before any listing or extraction."""
    if cfg.k < 1:
        raise DataonomyError(f"--k {cfg.k}: must be at least 1")
    if cfg.coverage < 0:
        raise DataonomyError(f"--coverage {cfg.coverage}: must be >= 0 (0 turns coverage off)")
    if cfg.coverage > cfg.k:
        raise DataonomyError(
            f"--coverage {cfg.coverage} cannot be met: each target can be served by at most --k {cfg.k} sources;"
            f" largest feasible coverage is at most {cfg.k}"
        )
    if cfg.coverage_floor is not None and not np.isfinite(cfg.coverage_floor):
        raise DataonomyError(f"--coverage-floor {cfg.coverage_floor}: must be a finite number")
    if cfg.image_budget is not None and cfg.image_budget < 0:
        raise DataonomyError(f"--image-budget {cfg.image_budget}: must be >= 0")
    if cfg.time_limit is None or not cfg.time_limit > 0:
        raise DataonomyError(f"--time-limit {cfg.time_limit}: must be more than 0 seconds")
    if (cfg.diversity_depth is None) != (cfg.diversity_max is None):
        raise DataonomyError("--diversity-depth and --diversity-max must be given together")
    if cfg.diversity_depth is not None:
        deepest = load_wordnet().max_depth
        # Out of range the groups would be empty and the cap silently off while the manifest records it.
        if not 0 <= cfg.diversity_depth <= deepest:
            raise DataonomyError(
                f"--diversity-depth {cfg.diversity_depth}: must be between 0 (the WordNet root) and {deepest}"
                " (the deepest WordNet node)"
            )
        if cfg.diversity_max < 0:
            raise DataonomyError(f"--diversity-max {cfg.diversity_max}: must be >= 0")
    get_affinity(cfg.affinity)  # an unknown measure fails before any work
    for option, name in (("--target", cfg.target), ("--source", cfg.source)):
        if name not in list_datasets():
            raise DataonomyError(
                f"{option} '{name}': unknown dataset reader (known: {', '.join(list_datasets())})"
            )
    for option, files in (("--include", cfg.include), ("--exclude", cfg.exclude)):
        for f in files:
            read_wnids(f, option)  # unreadable files fail now
    check_outputs(Path(cfg.out))


def check_outputs(out: Path) -> tuple[Path, Path]:
    """The manifest path and its GraphML beside it; a folder in the way is an error, before any work."""
    graph = out.with_suffix(".graphml")
    if graph == out:
        raise DataonomyError(
            f"--out {out}: the manifest is JSON; its GraphML goes beside it (give e.g. {out.with_suffix('.json')})"
        )
    for path in (out, graph):
        if path.is_dir():
            raise DataonomyError(
                f"--out {out}: {path} is a folder; give a file name (e.g. {path / 'selection.json'})"
            )
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataonomyError(f"--out {out}: {parent} is a file, not a folder")
            break
    check_writable(out)  # permission or a read-only disk: said now, not after hours of extraction
    return out, graph


def _open_reader(option: str, name: str, root, opts: dict):
    """open_dataset, with reader-option errors naming the option `select` takes (--target-classes, ...)."""
    try:
        return open_dataset(name, root, **opts)
    except DataonomyError as exc:
        text = str(exc)
        if option == "--target" and " is not an option of the " in text:
            for key in ("classes", "split", "images-per-class"):
                text = text.replace(f"--{key} is not", f"--target-{key} is not", 1)
            raise DataonomyError(text) from None
        raise


def _pool_precheck(
    cfg: SelectConfig, classes: list[str], names: list[str], counts
) -> tuple[list[int], list[int], dict]:
    """What the pool's class list decides, checked before any feature is extracted.

    --include/--exclude files, k against the pool, the diversity groups, the image budget: the same
    closed-form checks the solver runs later, without affinities (coverage is checked once they exist).
    Returns (include, exclude, groups).
    """
    include, exclude = _class_lists(cfg, classes, names)
    groups = {}
    if cfg.diversity_depth is not None:
        groups = diversity_groups(classes, cfg.diversity_depth)
        if not groups:
            wn = load_wordnet()
            depths = [wn.depth(w) for w in classes if w in wn]
            where = (
                f"its classes lie at WordNet depths {min(depths)}..{max(depths)}"
                if depths
                else "none of its classes is in WordNet"
            )
            raise DataonomyError(
                f"--diversity-depth {cfg.diversity_depth}: no source class of the pool has a WordNet node at that depth"
                f" ({where}), so --diversity-max would constrain nothing"
            )
    problem = SelectionProblem(
        affinity=np.ones((1, len(classes))),
        k=cfg.k,
        groups=groups,
        max_per_group=cfg.diversity_max,
        image_counts=counts,
        image_budget=cfg.image_budget,
        include=include,
        exclude=exclude,
        source_names=[f"{w} ({n})" for w, n in zip(classes, names, strict=True)],
    )
    precheck_selection(problem, time_limit=cfg.time_limit, threads=1)
    return include, exclude, groups


def _dataset_options(cfg: SelectConfig) -> tuple[dict, dict]:
    target = reader_options(
        classes=cfg.target_classes, split=cfg.target_split, images_per_class=cfg.target_images_per_class,
        seed=cfg.seed, labels_root=cfg.target_labels_root, allow_partial=cfg.target_allow_partial,
        skip_bad=cfg.target_skip_bad, masks=cfg.target_masks, mask_suffix=cfg.target_mask_suffix,
        normal_dir=cfg.target_normal_dir, abnormal_dir=cfg.target_abnormal_dir, mask_dir=cfg.target_mask_dir,
    )  # fmt: skip
    source = reader_options(classes=cfg.source_classes, images_per_class=cfg.images_per_class, seed=cfg.seed)
    # Paths as strings: the options are part of the cache's JSON provenance.
    return tuple({k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()} for d in (target, source))


@dataclass
class SourcePool:
    """The source classes the programme chooses from, however they were found.

    ``kind``: ``images`` (a folder of source images, embedded like the target) or ``classifier`` (the
    backbone's ImageNet-1k classes; no source image is read). ``logit_index``: each class's column in
    the backbone's logits (None when a class has none); ``image_counts``: images per class on disk
    (None for a classifier pool); ``features``: the embedded sample (None for a classifier pool).
    """

    kind: str
    classes: list[str]
    names: list[str]
    logit_index: np.ndarray | None
    image_counts: np.ndarray | None
    features: FeatureSet | None = None

    def describe(self, cfg: SelectConfig) -> dict:
        """The manifest's ``source`` section."""
        if self.kind == "classifier":
            return {
                "dataset": cfg.source,
                "pool": "classifier",
                "description": "the ImageNet-1k classes of the backbone's classifier; no source images were read",
                "root": None,
                "classes": len(self.classes),
                "images_sampled": 0,
                "images_per_class": None,
                "seed": cfg.seed,
                "fingerprint": fingerprint_json(self.classes),
            }
        sf = self.features
        return {
            "dataset": cfg.source,
            "pool": "images",
            "root": str(cfg.source_root),
            "classes": len(self.classes),
            "images_sampled": len(sf),
            "images_per_class": cfg.images_per_class,
            "seed": cfg.seed,
            "fingerprint": fingerprint_files(sf.paths, cfg.source_root),
        }


def classifier_pool(source_classes: list[str] | None = None) -> SourcePool:
    """The packaged ImageNet-1k class list as a source pool (optionally only ``source_classes``)."""
    every = list(imagenet_classes())
    index = {w: i for i, (w, _) in enumerate(every)}
    if source_classes is None:
        chosen = list(range(len(every)))
    else:
        unknown = [w for w in source_classes if w not in index]
        if unknown:
            raise DataonomyError(
                f"--source-classes: '{unknown[0]}' is not an ImageNet-1k class (without --source-root the pool is"
                " the classifier's 1000 classes)"
            )
        chosen = sorted({index[w] for w in source_classes})
    return SourcePool(
        kind="classifier",
        classes=[every[i][0] for i in chosen],
        names=[every[i][1] for i in chosen],
        logit_index=np.array(chosen, dtype=np.int64),
        image_counts=None,
    )


def image_pool(sf: FeatureSet, counts: np.ndarray | None = None) -> SourcePool:
    """A pool read from source images: its classes, their logit columns and their image counts on disk
    (``counts``: already counted from the reader; else from the cache's paths)."""
    logit_index = None
    if sf.imagenet_indices is not None and all(i is not None for i in sf.imagenet_indices):
        logit_index = np.array(sf.imagenet_indices, dtype=np.int64)
    return SourcePool(
        kind="images",
        classes=list(sf.classes),
        names=list(sf.class_names),
        logit_index=logit_index,
        image_counts=_folder_counts(zip(sf.paths, sf.targets, strict=True), len(sf.classes))
        if counts is None
        else counts,
        features=sf,
    )


def _check_classifier_pool(cfg: SelectConfig) -> None:
    """Without --source-root only the classifier's own ImageNet-1k classes can be the pool: say what is missing."""
    if cfg.source != "imagenet":
        raise DataonomyError(f"--source-root is required for --source {cfg.source} (a folder of its images)")
    needs = get_affinity(cfg.affinity).requires
    if "source_features" in needs or "source_labels" in needs:
        raise DataonomyError(
            f"--affinity {cfg.affinity} compares target images with source images: give --source-root (the ILSVRC"
            " train folder), or use --affinity softmax, which needs only the target images"
        )
    if cfg.image_budget is not None:
        raise DataonomyError(
            "--image-budget needs the number of images in each source class: give --source-root (no packaged"
            " table of ILSVRC-2012 training counts is available)"
        )


@dataclass
class _PoolInputs:
    """The listed inputs of a run, before any feature: the readers, what each role extracts, and the pool's
    classes (``pool``: the classifier's pool; None: the pool comes from the source images' features)."""

    readers: dict
    roles: list[tuple]
    pool: SourcePool | None
    classes: list[str]
    names: list[str]
    counts: np.ndarray | None


@dataclass
class ClassAffinity:
    """Target classes (and each target image's class index) against the pool's classes: the raw class
    affinity, its AHP normalisation (what the programme maximises) and AHP's consistency ratios."""

    target_classes: list[str]
    target_labels: np.ndarray
    normalised: np.ndarray
    raw: np.ndarray
    consistency: np.ndarray


def run_selection(cfg: SelectConfig, log=print) -> SelectionRun:
    """Run the whole selection; write the manifest (and its GraphML) atomically; return what was found."""
    check_options(cfg)
    backbone, why = resolve_backbone(cfg.backbone, cfg.weights)
    if why:
        log(f"[backbone] {why}")
    cfg = dataclasses.replace(cfg, backbone=backbone)  # the manifest records the backbone actually used
    if cfg.source_root is None:
        _check_classifier_pool(cfg)
    t0 = time.perf_counter()
    listed = _open_inputs(cfg, log)
    # Every option the pool's class list decides (--include/--exclude, k, diversity, budget) is checked
    # now: extraction can take hours, a bad option must not wait for it.
    constraints = _pool_precheck(cfg, listed.classes, listed.names, listed.counts)

    # 1. Features (cached in HDF5; extracted only where missing; `dataonomy features` writes the same caches).
    feats = _select_features(cfg, listed, log)
    tf = feats["target"]
    pool = listed.pool if listed.pool is not None else image_pool(feats["source"], listed.counts)
    if pool.classes != listed.classes:  # a --source-features cache of another pool
        raise DataonomyError(
            f"--source-features {cfg.source_features}: its classes differ from the pool at --source-root {cfg.source_root}"
        )
    # 2. Affinity: per-image scores, raw class affinity; 3. AHP normalisation per target class.
    affinity = _class_affinity(cfg, tf, pool, log)
    # 4. The integer programme.
    problem, result = _solve(cfg, affinity, pool, constraints, log)
    # 5. Manifest and taxonomy graph.
    manifest = build_manifest(cfg, tf, pool, affinity, problem, result)
    out, graph_path = _write_selection(Path(cfg.out), manifest)
    sf = pool.features
    report = {
        "solve_time_s": result.solve_time,
        "wall_time_s": time.perf_counter() - t0,
        "extracted": {"target": tf.extracted, "source": 0 if sf is None else sf.extracted},
    }
    return SelectionRun(
        manifest, result, pool.classes, affinity.target_classes, affinity.normalised, affinity.raw,
        affinity.consistency, report, out, graph_path,
    )  # fmt: skip


def _open_inputs(cfg: SelectConfig, log) -> _PoolInputs:
    """Both listings first, so that a bad --source-root or --source-classes fails now, not after the target's
    features; the readers then go to feature extraction, which would otherwise list them again."""
    target_opts, source_opts = _dataset_options(cfg)
    readers = {"target": _open_reader("--target", cfg.target, cfg.target_root, target_opts)}
    roles = [("target", cfg.target, cfg.target_root, target_opts, cfg.target_features)]
    if cfg.source_root is None:
        pool = classifier_pool(cfg.source_classes)
        log(
            f"[source] {len(pool.classes)} ImageNet-1k classes of the {cfg.backbone} classifier (no source images)"
        )
        return _PoolInputs(readers, roles, pool, pool.classes, pool.names, None)
    try:
        readers["source"] = _open_reader("--source", cfg.source, cfg.source_root, source_opts)
    except DataonomyError as exc:
        where = "--source-classes" if cfg.source_classes and "unknown wnid" in str(exc) else "source pool"
        raise DataonomyError(f"{where}: {exc}") from None
    roles.append(("source", cfg.source, cfg.source_root, source_opts, cfg.source_features))
    reader = readers["source"]
    classes, names = list(reader.classes), list(getattr(reader, "class_names", reader.classes))
    counts = _folder_counts(((s.path, s.target) for s in reader.samples), len(classes))
    inet = getattr(reader, "imagenet_indices", None)
    outside = [w for w, i in zip(classes, inet or [None] * len(classes), strict=True) if i is None]
    if cfg.affinity == "softmax" and outside:
        raise DataonomyError(
            f"--affinity softmax needs a source pool of ImageNet-1k classes; this pool has {len(outside)} classes"
            f" outside ImageNet-1k ('{outside[0]}', ...): use --affinity prototype, gaussian or frechet"
        )
    return _PoolInputs(readers, roles, None, classes, names, counts)


def _select_features(cfg: SelectConfig, listed: _PoolInputs, log) -> dict[str, FeatureSet]:
    """Each role's features, from its cache (given, or named by :func:`feature_cache_path`)."""
    feats: dict[str, FeatureSet] = {}
    for role, name, root, opts, given in listed.roles:
        cache = given or feature_cache_path(cfg.cache_dir, name, root, opts, cfg.backbone, cfg.weights)
        log(f"[features] {role}: {name} at {root} -> {cache}")
        feats[role] = ensure_features(
            name,
            root,
            opts,
            cfg.backbone,
            cache,
            ExtractionRequest(
                weights=cfg.weights,
                device=cfg.device,
                batch_size=cfg.batch_size,
                num_workers=cfg.num_workers,
            ),
            dataset=listed.readers[role],
        )
        log(f"[features] {role}: {len(feats[role])} images, {feats[role].extracted} extracted now")
    return feats


def _class_affinity(cfg: SelectConfig, tf: FeatureSet, pool: SourcePool, log) -> ClassAffinity:
    """Per-image scores of the target images against the pool, the raw class affinity and its AHP normalisation."""
    target_classes, target_labels = _target_groups(list(tf.labels))
    if cfg.affinity == "softmax" and pool.logit_index is None:
        raise DataonomyError(
            "--affinity softmax needs a source pool of ImageNet-1k classes; this pool has classes outside "
            "ImageNet-1k: use --affinity prototype, gaussian or frechet"
        )
    if cfg.affinity == "softmax" and tf.logits is None:
        raise DataonomyError(
            f"--affinity softmax needs ImageNet logits; backbone {cfg.backbone} has no ImageNet head"
        )
    device = resolve_device(cfg.device)  # the extraction's device (cuda:N included), not a guess of its own
    sf = pool.features
    inputs = AffinityInputs(
        target_features=tf.features,
        target_logits=tf.logits,
        target_labels=target_labels,
        source_features=None if sf is None else sf.features,
        source_labels=None if sf is None else np.asarray(sf.targets),
        source_logit_index=pool.logit_index,
        num_sources=len(pool.classes),
        num_targets=len(target_classes),
    )
    scores = per_image_scores(cfg.affinity, inputs, device=device)
    raw = class_affinity(scores, target_labels, len(target_classes)).cpu().numpy().astype(np.float64)
    log(f"[affinity] {cfg.affinity}: {len(target_classes)} target x {len(pool.classes)} source classes")
    P, cr = ahp_normalize(scores, target_labels, len(target_classes), device=device)
    log(
        f"[ahp] consistency ratio per target: {', '.join(f'{c}={r:.3f}' for c, r in zip(target_classes, cr, strict=True))}"
    )
    return ClassAffinity(target_classes, target_labels, P, raw, cr)


def _solve(
    cfg: SelectConfig, affinity: ClassAffinity, pool: SourcePool, constraints: tuple, log
) -> tuple[SelectionProblem, SelectionResult]:
    """The integer programme over the normalised affinity; ``constraints``: (include, exclude, groups)."""
    include, exclude, groups = constraints
    problem = SelectionProblem(
        affinity=affinity.normalised,
        k=cfg.k,
        coverage=cfg.coverage,
        coverage_floor=cfg.coverage_floor,
        groups=groups,
        max_per_group=cfg.diversity_max,
        image_counts=pool.image_counts,
        image_budget=cfg.image_budget,
        include=include,
        exclude=exclude,
        target_names=affinity.target_classes,
        source_names=pool.names,
    )
    result = solve_selection(problem, time_limit=cfg.time_limit, threads=1)
    log(
        f"[bip] {result.status}: objective {result.objective:.4f}, gap {result.gap:.2e}, {result.solve_time:.2f} s"
    )
    return problem, result


def _write_selection(out: Path, manifest: dict) -> tuple[Path, Path]:
    """Validate, then write the GraphML and, last, the manifest: a manifest on disk means everything it names
    is there. Returns both paths."""
    out, graph_path = check_outputs(out)
    graph = graph_from_manifest(manifest)
    validate_manifest(manifest, str(out))
    export_graph(graph, "graphml", graph_path)
    try:
        write_manifest(out, manifest)
    except BaseException:
        graph_path.unlink(missing_ok=True)  # no GraphML without its manifest
        raise
    return out, graph_path


def _folder_counts(paths_and_targets, num_classes: int) -> np.ndarray:
    """Images per source class on disk (not just the sample: what pretraining on it would read), from
    (path, class index) pairs: each class's folder."""
    counts = np.zeros(num_classes, dtype=np.int64)
    seen: dict[int, Path] = {}
    for path, target in paths_and_targets:
        seen.setdefault(int(target), Path(path).parent)
    for t, folder in sorted(seen.items()):
        counts[t] = sum(1 for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0
    return counts


def build_manifest(cfg, tf, pool, affinity: ClassAffinity, problem, result) -> dict:
    """The manifest (METHOD.md section 5). No timestamps or timings: same inputs, same bytes."""
    target_classes = affinity.target_classes
    target_info = {
        "dataset": cfg.target,
        "root": str(cfg.target_root),
        "classes": target_classes,
        "images": len(tf),
        "images_per_class": {
            c: int((affinity.target_labels == i).sum()) for i, c in enumerate(target_classes)
        },
        "fingerprint": fingerprint_files(tf.paths, cfg.target_root),
    }
    source_info = pool.describe(cfg)
    backbone = {
        "name": cfg.backbone,
        "weights": str(cfg.weights),
        "weights_id": tf.backbone.get("weights_id"),
        "preprocessing": tf.backbone.get("preprocessing"),
    }
    parameters = cfg.recorded()
    parameters["coverage_floor"] = problem.coverage_floor
    inputs = {
        "target": target_info["fingerprint"],
        "source": source_info["fingerprint"],
        "backbone": backbone,
        "parameters": parameters,
    }
    return {
        "schema": SCHEMA,
        "tool": {"name": "dataonomy", "version": __version__},
        "target": target_info,
        "source": source_info,
        "backbone": backbone,
        "parameters": parameters,
        "ahp": {
            "consistency_ratio": {
                t: round(float(c), 8) for t, c in zip(target_classes, affinity.consistency, strict=True)
            }
        },
        "selected": _selected_entries(pool, affinity, result),
        "solver": {
            "name": "PuLP/CBC",
            "status": result.status,
            "objective": round(result.objective, 10),
            "bound": round(result.bound, 10),
            "gap": round(result.gap, 12),
        },
        "greedy": _greedy_summary(result),
        "fingerprint": fingerprint_json(inputs),
    }


def _selected_entries(pool, affinity: ClassAffinity, result) -> list[dict]:
    """The manifest's ``selected`` list: each selected class with its affinities and the targets it serves."""
    index = imagenet_index()
    counts = pool.image_counts
    targets = affinity.target_classes
    P, raw = affinity.normalised, affinity.raw
    return [
        {
            "wnid": pool.classes[s],
            "name": pool.names[s],
            "imagenet_index": index.get(pool.classes[s]),
            "source_index": int(s),
            "images": None if counts is None else int(counts[s]),
            "affinity": {t: round(float(P[i, s]), 8) for i, t in enumerate(targets)},
            "raw_affinity": {t: round(float(raw[i, s]), 8) for i, t in enumerate(targets)},
            "serves": [t for i, t in enumerate(targets) if result.assignment[s, i] > 0.5],
        }
        for s in result.selected
    ]


def _greedy_summary(result) -> dict:
    """The greedy baseline against the programme's solution (the manifest's ``greedy``)."""
    greedy = result.greedy
    return {
        "objective": round(greedy.objective, 10),
        "objective_ratio_to_bip": round(greedy.objective / result.objective, 10)
        if result.objective
        else None,
        "overlap_with_bip": len(set(greedy.selected) & set(result.selected)),
        "violations": [{"family": v.family, "message": v.message} for v in greedy.violations],
    }


def format_selection_report(run, top: int = 5) -> str:
    """The short report: solver, greedy comparison, and each target's strongest selected sources."""
    m, r = run.manifest, run.result
    lines = [
        f"selected {len(m['selected'])} of {m['source']['classes']} source classes -> {run.manifest_path}",
        f"solver: {r.status}, objective {r.objective:.6f}, gap {r.gap:.2e}, {r.solve_time:.2f} s",
        f"greedy top-k: objective {m['greedy']['objective']:.6f} "
        f"({100 * (m['greedy']['objective_ratio_to_bip'] or 0):.2f}% of the BIP's), "
        f"{m['greedy']['overlap_with_bip']} classes in common, "
        + (
            "violates " + "; ".join(v["message"] for v in m["greedy"]["violations"])
            if m["greedy"]["violations"]
            else "no constraint violated"
        ),
    ]
    for t in m["target"]["classes"]:
        best = sorted(m["selected"], key=lambda e: -e["affinity"][t])[:top]
        cr = m["ahp"]["consistency_ratio"][t]
        lines.append(
            f"  {t} (AHP CR {cr:.3f}): " + ", ".join(f"{e['name']} {e['affinity'][t]:.4f}" for e in best)
        )
    lines.append(f"taxonomy graph: {run.graph_path}")
    return "\n".join(lines)


def read_select_config(path: str | Path) -> dict:
    """The :class:`SelectConfig` fields saved in ``path``: a manifest written by ``dataonomy select`` (its
    recorded ``parameters``: the fields that shape the selection) or a JSON object of the fields themselves.
    Path fields come back as paths; any problem is a one-line error naming the file (``--config``)."""
    from dataonomy.io import check_field_types, read_config_json

    where = f"--config {path}"
    data = read_config_json(path)
    if isinstance(data, dict) and isinstance(data.get("parameters"), dict):
        data = data["parameters"]
    if not isinstance(data, dict):
        raise DataonomyError(f"{where}: neither a manifest nor a select config (a JSON object)")
    types = {f.name: str(f.type) for f in dataclasses.fields(SelectConfig)}
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise DataonomyError(f"{where}: unknown config field(s) {', '.join(unknown)}")
    check_field_types(SelectConfig, data, where)
    return {k: Path(v) if "Path" in types[k] and isinstance(v, str) else v for k, v in data.items()}
