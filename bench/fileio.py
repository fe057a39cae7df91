"""Atomic writes and content hashes: nothing is half-written, caches key on bytes not mtimes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tbps_bench.errors import BenchError

#: set by the command line's Ctrl-C handler: nothing is committed after an interrupt, even one that a
#: library caught and swallowed
INTERRUPTED = threading.Event()


def _commit_allowed() -> None:
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def sha256_path(path: str | Path) -> str:
    """A file's hash, or for a checkpoint folder the hash of its files' names and hashes."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return sha256_json([[p.relative_to(path).as_posix(), sha256_file(p)] for p in files])


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _commit_allowed()
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _commit_allowed()
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def linked_copy_dir(source: str | Path, target: str | Path) -> None:
    """``target`` becomes a copy of the folder ``source`` whose files are hard links where the file
    system allows. Safe because folders written with ``atomic_dir`` are replaced, never edited in
    place: a later write of either folder leaves the other's files as they were."""
    source = Path(source)
    with atomic_dir(target) as tmp:
        for path in sorted(source.rglob("*")):
            destination = tmp / path.relative_to(source)
            if path.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            try:
                os.link(path, destination)
            except OSError:
                shutil.copy2(path, destination)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=1, sort_keys=True, allow_nan=False) + "\n")


def cache_root() -> Path:
    """``$TBPS_BENCH_CACHE``, else ``$XDG_CACHE_HOME/tbps-bench``, else ``~/.cache/tbps-bench``."""
    if os.environ.get("TBPS_BENCH_CACHE"):
        return Path(os.environ["TBPS_BENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tbps-bench"


def check_writable_folder(path: str | Path, flag: str) -> None:
    """Stop before any work when results could not be written to ``path``."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise BenchError(f"{flag} {path}: {existing} is a file; expected a folder (it is created if missing)")
    if existing is None or not os.access(existing, os.W_OK | os.X_OK):
        raise BenchError(f"{flag} {path}: {existing or path} is not writable")


_ZIP_MAGIC, _NPY_MAGIC = b"PK\x03\x04", b"\x93NUMPY"


def read_npz(path: str | Path) -> dict[str, Any]:
    """The arrays of an ``.npz`` archive, or one line saying what the file is instead."""
    import zipfile

    import numpy as np

    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise BenchError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if head.startswith(_NPY_MAGIC):
        raise BenchError(
            f"{path} is a .npy file (one array); expected a .npz archive: numpy.savez(path, similarity=..., "
            "text_ids=..., image_ids=...)"
        )
    if not head.startswith(_ZIP_MAGIC):
        what = "empty" if not head else ("zero-filled" if not any(head) else f"a file starting with {head[:4]!r}")
        raise BenchError(f"{path} is not a .npz archive (a zip file): it is {what}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BenchError(f"{path}: unreadable .npz archive ({type(exc).__name__}: {exc})") from exc
