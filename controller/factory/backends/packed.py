"""Stage outputs that live in the blob store only: a folder on the controller holds just their index.

A step that ran on a Ray worker leaves its files in the blob store (see ``transfer.py``); the job worker writes
``.slmops-packed.json`` (each file's path relative to the folder, sha256 and size) into the step's work dir
instead of copying the files back, and the stage cache keeps that folder as the step's entry. So model
weights built on a GPU node go node -> store -> the node that needs them next, never through the
controller's disk.

Everything in the job worker that looks at an output asks this module (a path *covered* by an index is
read from the store): does it exist, what is its digest (the same as :class:`Fingerprints` gives for the
files on disk), which blobs make it up, and the bytes of a small file (metrics, golden answers, a dataset
read for its schema).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

from shared.errors import NotFound

if TYPE_CHECKING:
    from controller.factory.cache import Fingerprints
    from controller.registry.blobstore.base import BlobStore

INDEX = ".slmops-packed.json"
MAX_DEPTH = 8  # how far up from an output path its index may be (outputs nest a few folders deep)

# (path relative to the indexed folder, sha256, size)
FileRow = tuple[str, str, int]


def write_index(folder: Path, files: list[FileRow]) -> Path:
    """Record that ``folder``'s files are the blobs ``files`` (written atomically)."""
    path = Path(folder) / INDEX
    tmp = path.with_name(f".{INDEX}.{os.getpid()}.tmp")
    rows = [[rel, sha, int(size)] for rel, sha, size in files if rel != INDEX]
    tmp.write_text(json.dumps({"files": rows}, separators=(",", ":")))
    tmp.replace(path)
    return path


def read_index(folder: Path) -> list[FileRow] | None:
    path = Path(folder) / INDEX
    if not path.is_file():
        return None
    try:
        return [(str(r[0]), str(r[1]), int(r[2])) for r in json.loads(path.read_text())["files"]]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise NotFound(f"{path} is not a readable stage output index ({exc}); rerun the build") from exc


def covering(path: Path) -> tuple[Path, list[FileRow]] | None:
    """The indexed folder that ``path`` lies in (itself or a parent) and its rows; None for a plain path."""
    current = Path(path)
    for _ in range(MAX_DEPTH):
        rows = read_index(current) if current.is_dir() else None
        if rows is not None:
            return current, rows
        if current.parent == current:
            break
        current = current.parent
    return None


def entries(path: Path) -> list[FileRow] | None:
    """The blobs at ``path`` (a file: one row with path ""; a folder: its files relative to it), or None when
    ``path`` is not in an indexed folder. An indexed path with no file at or under it gives ``[]``."""
    found = covering(path)
    if found is None:
        return None
    root, rows = found
    rel = Path(path).relative_to(root).as_posix()
    if rel == ".":
        return list(rows)
    out: list[FileRow] = []
    for name, sha, size in rows:
        if name == rel:
            return [("", sha, size)]
        if name.startswith(rel + "/"):
            out.append((name[len(rel) + 1 :], sha, size))
    return out


def is_remote(path: Path) -> bool:
    """True when ``path`` is in an indexed folder (its bytes are in the blob store, not here)."""
    return covering(path) is not None


def exists(path: Path) -> bool:
    """A file or folder on disk, or one an index lists."""
    rows = entries(path)
    return bool(rows) if rows is not None else Path(path).exists()


def digest(path: Path, fp: Fingerprints) -> str:
    """What ``fp.path(path)`` gives for the same files on disk: a file's sha256, or a folder's hash over its
    files' relative paths and sha256 in path order."""
    rows = entries(path)
    if rows is None:
        return fp.path(Path(path))
    if len(rows) == 1 and rows[0][0] == "":
        return rows[0][1]
    folder = hashlib.sha256()
    for rel, sha, _size in sorted(rows, key=lambda r: PurePosixPath(r[0]).parts):
        folder.update(f"{rel}\0{sha}\n".encode())
    return folder.hexdigest()


def _blob_of(path: Path, rows: list[FileRow], blobs: BlobStore | None) -> tuple[BlobStore, str]:
    """The store and sha256 of the indexed file ``path`` (``rows``: its :func:`entries`)."""
    if len(rows) != 1 or rows[0][0] != "":
        raise NotFound(f"stage output {path} is not a file in its step's outputs (see {INDEX} above it)")
    if blobs is None:
        raise NotFound(f"stage output {path} is in the blob store and no blob store was given to read it")
    return blobs, rows[0][1]


def read_bytes(path: Path, blobs: BlobStore | None) -> bytes:
    """The content of the file ``path``: from disk, or from the blob store when an index covers it."""
    rows = entries(path)
    if rows is None:
        return Path(path).read_bytes()
    store, sha = _blob_of(path, rows, blobs)
    return store.read_bytes(sha)


@contextmanager
def open_text(path: Path, blobs: BlobStore | None) -> Iterator[IO[str]]:
    """A text stream of the file ``path``, streamed from the blob store when an index covers it."""
    rows = entries(path)
    if rows is None:
        with open(path, encoding="utf-8") as fh:
            yield fh
        return
    store, sha = _blob_of(path, rows, blobs)
    raw, _ = store.open_range(sha)
    with raw, io.TextIOWrapper(raw, encoding="utf-8") as fh:  # type: ignore[arg-type]
        yield fh


def referenced(cache_root: Path) -> set[str]:
    """Every blob the stage cache's indexed entries name (blob garbage collection keeps them)."""
    root = Path(cache_root)
    shas: set[str] = set()
    if not root.is_dir():
        return shas
    for index in root.glob(f"*/{INDEX}"):
        try:
            shas.update(sha for _rel, sha, _size in read_index(index.parent) or [])
        except NotFound:
            continue
    return shas
