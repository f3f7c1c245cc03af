"""Small I/O helpers shared by every stage: atomic writes and JSON."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dataonomy.errors import DataonomyError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    A crash or an error leaves no file at ``path`` that looks complete (the rename is atomic
    on POSIX), and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, obj, indent: int = 2) -> Path:
    """Write JSON atomically, keys in insertion order, newline-terminated."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(path)


@contextmanager
def staged_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield ``<out>.partial`` to write a whole folder into; on success it replaces ``out``.

    A non-empty ``out`` is refused unless ``overwrite``; the old folder is only removed once the
    new one is complete. An error leaves ``out`` untouched and no partial folder behind.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataonomyError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataonomyError(f"--out {out}: folder is not empty (pass --overwrite to replace it)")
    partial = out.with_name(out.name + ".partial")
    if partial.is_dir():
        shutil.rmtree(partial)  # left by an interrupted run
    elif partial.exists():
        partial.unlink()
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(out.name + ".replaced")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old)
    else:
        os.replace(partial, out)


def json_safe(obj):
    """``obj`` with NaN and infinite floats as None (JSON has no NaN), through dicts, lists and tuples."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def read_json_file(path: str | Path, unreadable: str, missing: str | None = None, detail=str):
    """The JSON ``path`` holds. A file that is not there raises ``missing`` (where given) as a one-line error; one
    that cannot be read or is not JSON raises ``unreadable (detail(exc))``. The one way a file of JSON is read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        if missing is not None:
            raise DataonomyError(missing) from None
        error = exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        error = exc
    raise DataonomyError(f"{unreadable} ({detail(error)})") from None


def read_config_json(path: str | Path):
    """The JSON a ``--config FILE`` holds; a missing, unreadable or invalid file is a one-line error naming it."""
    return read_json_file(
        path, f"--config {path}: not a readable config", detail=lambda exc: type(exc).__name__
    )
