"""The selection manifest: a versioned JSON record of what was selected, from what, and how.

The manifest holds no timestamps or timings, so the same inputs give a byte-identical file;
run-specific facts (solve time, wall time) go to the report printed by ``dataonomy select``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dataonomy.errors import DataonomyError
from dataonomy.io import read_json_file, write_json

SCHEMA = "dataonomy.manifest/1"

# Keys every manifest has, and the keys every selected-class entry has.
REQUIRED = {
    "schema": str,
    "target": dict,
    "source": dict,
    "backbone": dict,
    "parameters": dict,
    "selected": list,
    "solver": dict,
    "greedy": dict,
    "fingerprint": str,
}
# "images" is None when the pool came from the classifier (no source images were read).
SELECTED_REQUIRED = {
    "wnid": str,
    "name": str,
    "source_index": int,
    "images": (int, type(None)),
    "affinity": dict,
}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint_files(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """sha256 over (relative path, content hash) of every file: the identity of a dataset sample.

    Paths are taken relative to ``root`` so the same data in another folder has the same fingerprint.
    """
    h = hashlib.sha256()
    root = Path(root).resolve() if root is not None else None
    for p in sorted(str(x) for x in paths):
        rel = p
        if root is not None:
            try:
                rel = str(Path(p).resolve().relative_to(root))
            except ValueError:
                rel = p
        h.update(rel.encode())
        h.update(b"\0")
        h.update(sha256_file(p).encode())
        h.update(b"\n")
    return h.hexdigest()


def fingerprint_json(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def validate_manifest(manifest: dict, where: str = "manifest") -> dict:
    """Check the schema; raise a one-line DataonomyError naming the first problem."""
    if not isinstance(manifest, dict):
        raise DataonomyError(f"{where}: not a JSON object")
    if manifest.get("schema") != SCHEMA:
        raise DataonomyError(f"{where}: schema is {manifest.get('schema')!r}, expected {SCHEMA!r}")
    for key, typ in REQUIRED.items():
        if not isinstance(manifest.get(key), typ):
            raise DataonomyError(f"{where}: '{key}' is missing or not a {typ.__name__}")
    if not manifest["selected"]:
        raise DataonomyError(f"{where}: 'selected' is empty")
    seen = set()
    for i, entry in enumerate(manifest["selected"]):
        for key, typ in SELECTED_REQUIRED.items():
            if key not in entry or not isinstance(entry[key], typ):
                what = " or ".join(t.__name__ for t in typ) if isinstance(typ, tuple) else typ.__name__
                raise DataonomyError(f"{where}: selected[{i}].{key} is missing or not a {what}")
        if entry["wnid"] in seen:
            raise DataonomyError(f"{where}: selected[{i}].wnid {entry['wnid']} appears twice")
        seen.add(entry["wnid"])
    k = manifest["parameters"].get("k")
    if k is not None and k != len(manifest["selected"]):
        raise DataonomyError(
            f"{where}: parameters.k is {k} but {len(manifest['selected'])} classes are selected"
        )
    return manifest


def write_manifest(path: str | Path, manifest: dict) -> Path:
    """Validate and write atomically (a temporary name, then a rename)."""
    validate_manifest(manifest, str(path))
    return write_json(path, manifest)


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    manifest = read_json_file(
        path, f"{path}: not a readable JSON manifest", missing=f"{path}: manifest not found"
    )
    return validate_manifest(manifest, str(path))
