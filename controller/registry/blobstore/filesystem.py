"""The filesystem blob store (the default).

Layout: ``<root>/sha256/<first two hex digits>/<hex digest>``. A blob is written to a temp file in ``<root>/tmp``
(hashed while it is copied, so what is stored is exactly what was hashed), fsynced, then renamed into place: a
reader never sees a half-written blob, and putting the same content twice is a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from controller.registry.blobstore.base import BlobInfo, BlobRef, BlobStore, check_range, check_sha, not_found
from shared.durable import fsync_dir
from shared.errors import NotFound
from shared.manifest import CHUNK

log = logging.getLogger(__name__)


class FileBlobStore(BlobStore):
    """Files stored by content hash under ``root``; safe for concurrent readers and writers."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        self.description = f"filesystem {self.root}"

    # --- lookup ------------------------------------------------------------------------------------------
    def blob_path(self, sha: str) -> Path:
        """Where the blob with this digest lives (whether or not it exists)."""
        norm = check_sha(sha)
        return self.root / "sha256" / norm[:2] / norm

    def exists(self, sha: str) -> bool:
        return self.blob_path(sha).is_file()

    def path(self, sha: str) -> Path:
        path = self.blob_path(sha)
        if not path.is_file():
            raise not_found(path.name)
        return path

    def local_path(self, sha: str) -> Path | None:
        return self.path(sha)

    def stat(self, sha: str) -> BlobInfo:
        st = self.path(sha).stat()
        # ctime too: a blob hardlinked from a build's output keeps that file's (older) mtime.
        return BlobInfo(st.st_size, max(st.st_mtime, st.st_ctime))

    def open_range(self, sha: str, offset: int = 0, end: int | None = None) -> tuple[BinaryIO, int]:
        """The blob's file positioned at ``offset`` (a real file: ``fileno()`` works) and its total size."""
        fh = open(self.path(sha), "rb")  # noqa: SIM115 - returned to the caller
        try:
            total = os.fstat(fh.fileno()).st_size
            stop = check_range(sha, offset, end, total)
            fh.seek(offset)
        except BaseException:
            fh.close()
            raise
        if stop < total:
            return _Limited(fh, stop - offset), total  # type: ignore[return-value]
        return fh, total

    def iterate(self) -> Iterator[str]:
        for sub in sorted((self.root / "sha256").iterdir()):
            if sub.is_dir():
                for blob in sorted(sub.iterdir()):
                    with contextlib.suppress(Exception):
                        yield check_sha(blob.name)

    # --- writing -----------------------------------------------------------------------------------------
    def put_file(self, path: Path, *, link: bool = False) -> BlobRef:
        """Store one file; idempotent. ``link=True`` hardlinks instead of copying where the filesystem allows
        (only for files that will never be modified in place, e.g. a finished build's output)."""
        src = Path(path)
        if not src.is_file():
            raise NotFound(f"cannot add {src} to the blob store: not a regular file")
        fd, tmp_name = tempfile.mkstemp(prefix="put-", dir=self._tmp_dir())
        tmp = Path(tmp_name)
        try:
            if link and _try_link(src, tmp):
                os.close(fd)
                sha = _hash_path(tmp)
            else:
                with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                    sha = copy_hashing(inp, out)
                    out.flush()
                    os.fsync(out.fileno())
            size = tmp.stat().st_size
            dest = self.blob_path(sha)
            if dest.is_file() and dest.stat().st_size == size:
                return BlobRef(sha, size)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
            log.debug("stored blob %s (%d bytes) from %s", sha[:12], size, src)
            return BlobRef(sha, size)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def put_bytes(self, data: bytes) -> BlobRef:
        sha = hashlib.sha256(data).hexdigest()
        dest = self.blob_path(sha)
        if dest.is_file():
            return BlobRef(sha, len(data))
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix="put-", dir=self._tmp_dir())
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        return BlobRef(sha, len(data))

    def delete(self, sha: str) -> bool:
        try:
            self.blob_path(sha).unlink()
            return True
        except FileNotFoundError:
            return False

    def _tmp_dir(self) -> Path:
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(exist_ok=True)
        return tmp_dir


class _Limited:
    """A file read up to ``limit`` bytes from its position (an ``open_range`` with an end)."""

    def __init__(self, fh: BinaryIO, limit: int) -> None:
        self._fh, self._left = fh, limit

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._fh.read(n)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> _Limited:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _try_link(src: Path, tmp: Path) -> bool:
    try:
        tmp.unlink()
        os.link(src, tmp)
        return True
    except OSError:
        return False


def copy_hashing(inp: BinaryIO, out: BinaryIO) -> str:
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := inp.readinto(buf):  # type: ignore[attr-defined]
        digest.update(view[:n])
        out.write(view[:n])
    return digest.hexdigest()


def _hash_path(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
