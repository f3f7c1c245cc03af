"""Small I/O helpers shared by every stage: atomic writes and JSON."""

from __future__ import annotations

import collections.abc
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from dataonomy.errors import DataonomyError

# An output that cannot be written fails with the OS's reason (permission, a parent that is a file, a read-only
# or full disk), naming the path, never a traceback; a full disk mid-write leaves nothing that looks complete.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def output_error(path: str | Path, exc: OSError, option: str | None = None) -> DataonomyError:
    """The one-line error for an output ``path`` the OS refused (``option``: the CLI option that named it)."""
    where = f"{option} {path}" if option else str(path)
    culprit = f" at {exc.filename}" if exc.filename and str(exc.filename) != str(path) else ""
    return DataonomyError(f"{where}: cannot write ({exc.strerror or exc}{culprit})")


def make_dirs(path: str | Path, option: str | None = None) -> Path:
    """``mkdir -p`` as a one-line error naming the path and the reason."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc, option) from None
    return path


def check_writable(path: str | Path, option: str = "--out") -> Path:
    """Fail now, before any long work, when the file ``path`` could not be written. Nothing is left behind: a
    probe file is made and removed in the nearest folder that exists (the folders below it are made later,
    by the writer)."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise output_error(path, exc, option) from None
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    A crash or an error leaves no file at ``path`` that looks complete (the rename is atomic
    on POSIX), and no temporary file behind. A folder that cannot be written, or a disk that fills
    while writing, is a one-line :class:`DataonomyError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from None
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in _DISK_FULL or str(exc.filename or "") in (str(tmp), str(path)):
            raise output_error(path, exc) from None
        raise
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
    try:
        partial.mkdir(parents=True)
    except OSError as exc:
        raise output_error(out, exc, "--out") from None
    try:
        yield partial
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if exc.errno in _DISK_FULL:
            raise output_error(out, exc, "--out") from None
        raise
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


# What a JSON value must be for a declared scalar type: (how an error names it, the check).
_SCALARS = {
    type(None): ("null", lambda v: v is None),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
    Path: ("a path (a string)", lambda v: isinstance(v, str | Path)),
    dict: ("an object", lambda v: isinstance(v, dict)),
}


def _kind(hint) -> tuple[str, tuple]:
    """(``union``, ``literal``, ``sequence``, ``fixed`` (a tuple of positions), ``dict`` or ``scalar``, the
    type arguments without ``...``)."""
    origin = typing.get_origin(hint)
    args = tuple(a for a in typing.get_args(hint) if a is not Ellipsis)
    if origin in (typing.Union, types.UnionType):
        return "union", args
    if origin is typing.Literal:
        return "literal", args
    if origin in (list, tuple, set, collections.abc.Sequence):
        # tuple[int, int]: each position its own type; list[str] / tuple[str, ...]: one type for all
        fixed = origin is tuple and len(args) > 1 and Ellipsis not in typing.get_args(hint)
        return ("fixed" if fixed else "sequence"), args
    return ("dict" if origin is dict else "scalar"), args


def _type_name(hint) -> str:
    kind, args = _kind(hint)
    if kind == "union":
        return " or ".join(_type_name(a) for a in args)
    if kind in ("sequence", "fixed"):
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if kind == "dict":
        return _SCALARS[dict][0]
    return _SCALARS[hint][0] if hint in _SCALARS else getattr(hint, "__name__", str(hint))


def _fits(value, hint) -> bool:
    kind, args = _kind(hint)
    if kind == "union":
        return any(_fits(value, a) for a in args)
    if kind == "literal":
        return value in args
    if kind in ("sequence", "fixed"):
        if not isinstance(value, list | tuple):
            return False
        if kind == "fixed":
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(_fits(v, args[0]) for v in value)
    if kind == "dict":
        return isinstance(value, dict)
    # a type a JSON file cannot hold (a callable, a class): the constructor decides
    return _SCALARS[hint][1](value) if hint in _SCALARS else True


def check_field_types(cls, data: dict, where: str) -> None:
    """Every field of the dataclass ``cls`` present in ``data`` (a config read from a file) holds a value of its
    declared type; else a one-line error naming ``where``, the field, the value and the type expected."""
    from dataonomy.option_groups import flat_fields

    for f in flat_fields(cls):  # an option group's fields by their flat names, as config.json holds them
        if f.name in data and f.annotation is not None and not _fits(data[f.name], f.annotation):
            raise DataonomyError(
                f"{where}: field {f.name} is {json.dumps(data[f.name], default=str)}; "
                f"expected {_type_name(f.annotation)}"
            )


@lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex (memoised per path, size and modification time); an unreadable file is
    a one-line error naming it."""
    try:
        st = os.stat(path)
        return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)
    except OSError as exc:
        raise DataonomyError(f"{path}: cannot read the file to hash it ({exc.strerror or exc})") from None
