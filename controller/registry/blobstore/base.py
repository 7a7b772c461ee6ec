"""The blob store interface: files stored once by their sha256, whatever holds them.

Backends: :mod:`.filesystem` (the default: files under the data dir) and :mod:`.s3` (any S3-compatible store).
Every backend passes the same tests (``tests/unit/controller/registry/test_blobstore.py``).
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shared.errors import IntegrityError, InvalidArgument, NotFound
from shared.manifest import CHUNK, FileEntry, verify_file

SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def check_sha(sha: str) -> str:
    """Return ``sha`` lower-cased if it is a hex sha256 digest; raise InvalidArgument otherwise."""
    norm = sha.strip().lower()
    if not SHA_RE.match(norm):
        raise InvalidArgument(f"'{sha[:80]}' is not a sha256 hex digest (64 hex characters)")
    return norm


def not_found(sha: str) -> NotFound:
    # The message goes to agents too: the sha, never the controller's paths or bucket.
    return NotFound(f"blob {sha} is not in the registry's blob store (see `slmops models verify`)")


def check_range(sha: str, offset: int, end: int | None, total: int) -> int:
    """The end (exclusive) of ``[offset, end)`` within a blob of ``total`` bytes; InvalidArgument when outside."""
    if offset < 0 or offset > total:
        raise InvalidArgument(
            f"offset {offset} is outside blob {sha[:12]}… of {total} bytes: "
            "restart the download from 0 (delete the partial file)"
        )
    if end is None or end > total:
        return total
    if end < offset:
        raise InvalidArgument(f"range {offset}..{end} of blob {sha[:12]}… ends before it starts")
    return end


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    size: int


@dataclass(frozen=True)
class BlobInfo:
    size: int
    modified: float = 0.0  # unix time the blob was stored (or last re-stored)


class BlobStore(ABC):
    """Content-addressed blobs: put (hashing what is stored), read ranges, stat, presign, delete, iterate."""

    #: What the store is, for messages ("filesystem /x/artifacts", "s3 http://h:9000 bucket b").
    description: str = ""

    # --- writing -------------------------------------------------------------------------------------------
    @abstractmethod
    def put_file(self, path: Path, *, link: bool = False) -> BlobRef:
        """Store one file (idempotent). ``link``: hardlink instead of copying where the backend can."""

    @abstractmethod
    def put_bytes(self, data: bytes) -> BlobRef: ...

    def put_folder(self, folder: Path, *, link: bool = False) -> list[FileEntry]:
        """Store every regular file under ``folder``; returns manifest entries (relative paths, sorted)."""
        root = Path(folder)
        if not root.is_dir():
            raise NotFound(f"cannot add {root} to the blob store: not a folder")
        entries = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            ref = self.put_file(path, link=link)
            entries.append(FileEntry(path.relative_to(root).as_posix(), ref.sha256, ref.size))
        return entries

    # --- reading -------------------------------------------------------------------------------------------
    @abstractmethod
    def stat(self, sha: str) -> BlobInfo:
        """Size of the blob; NotFound naming the sha when it is not stored."""

    def exists(self, sha: str) -> bool:
        try:
            self.stat(sha)
        except NotFound:
            return False
        return True

    def size(self, sha: str) -> int:
        return self.stat(sha).size

    @abstractmethod
    def open_range(self, sha: str, offset: int = 0, end: int | None = None) -> tuple[BinaryIO, int]:
        """A readable stream of bytes ``[offset, end)`` (end None: to the end) and the blob's total size.
        The caller closes the stream. Offset past the end: InvalidArgument."""

    def read_bytes(self, sha: str) -> bytes:
        fh, _ = self.open_range(sha)
        with fh:
            return fh.read()

    def local_path(self, sha: str) -> Path | None:
        """The blob's file when the backend keeps one on this machine (for sendfile / hard links), else None."""
        return None

    def presign_get(self, sha: str, expires_s: int = 3600) -> str | None:
        """A URL anyone holding it may GET the blob from for ``expires_s``; None when the backend has none."""
        return None

    # --- housekeeping --------------------------------------------------------------------------------------
    @abstractmethod
    def delete(self, sha: str) -> bool:
        """Remove a blob (garbage collection); True if it existed."""

    @abstractmethod
    def iterate(self) -> Iterator[str]:
        """Every stored blob's sha256."""

    def check_reachable(self) -> None:
        """Raise Unavailable naming the store when it cannot be used (called at the controller's start)."""
        return None


def verify_blob(blobs: BlobStore, entry: FileEntry) -> None:
    """Re-hash the stored blob of ``entry``: IntegrityError when its size or sha256 differ, NotFound if absent."""
    path = blobs.local_path(entry.sha256)
    if path is not None:
        verify_file(path, entry)
        return
    fh, total = blobs.open_range(entry.sha256)
    if total != entry.size:
        fh.close()
        raise IntegrityError(f"{entry.path}: size {total} != {entry.size} in the manifest")
    digest = hashlib.sha256()
    with fh:
        while data := fh.read(CHUNK):
            digest.update(data)
    actual = digest.hexdigest()
    if actual != entry.sha256:
        raise IntegrityError(f"{entry.path}: sha256 {actual[:12]}… does not match the manifest ({entry.sha256[:12]}…)")


def copy_blob_to(blobs: BlobStore, sha: str, target: Path) -> None:
    """Write the blob into the file ``target`` (streamed; for backends without a local file)."""
    fh, _ = blobs.open_range(sha)
    with fh, open(target, "wb") as out:
        while data := fh.read(CHUNK):
            out.write(data)
