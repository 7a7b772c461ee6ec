"""Content-addressed blob store: every file of every model variant, stored once by its sha256.

Layout: ``<root>/sha256/<first two hex digits>/<hex digest>``. A blob is written to a temp file in the same
folder (hashed while it is copied, so what is stored is exactly what was hashed), fsynced, then renamed into
place: a reader never sees a half-written blob, and putting the same content twice is a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shared.errors import InvalidArgument, NotFound
from shared.manifest import CHUNK, FileEntry

log = logging.getLogger(__name__)

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def check_sha(sha: str) -> str:
    """Return ``sha`` lower-cased if it is a hex sha256 digest; raise InvalidArgument otherwise."""
    norm = sha.strip().lower()
    if not _SHA_RE.match(norm):
        raise InvalidArgument(f"'{sha[:80]}' is not a sha256 hex digest (64 hex characters)")
    return norm


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    size: int


class BlobStore:
    """Files stored by content hash under ``root``; safe for concurrent readers and writers."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)

    # --- lookup ------------------------------------------------------------------------------------------
    def blob_path(self, sha: str) -> Path:
        """Where the blob with this digest lives (whether or not it exists)."""
        norm = check_sha(sha)
        return self.root / "sha256" / norm[:2] / norm

    def exists(self, sha: str) -> bool:
        return self.blob_path(sha).is_file()

    def path(self, sha: str) -> Path:
        path = self.blob_path(sha)
        if not path.is_file():  # the message goes to agents too: the sha, not the controller's paths
            raise NotFound(f"blob {path.name} is not in the registry's blob store (see `slmops models verify`)")
        return path

    def size(self, sha: str) -> int:
        return self.path(sha).stat().st_size

    def open_range(self, sha: str, offset: int = 0) -> tuple[BinaryIO, int]:
        """Open the blob positioned at ``offset``; returns (file, total size). Caller closes the file."""
        path = self.path(sha)
        fh = open(path, "rb")  # noqa: SIM115 - returned to the caller
        try:
            total = os.fstat(fh.fileno()).st_size
            if offset < 0 or offset > total:
                raise InvalidArgument(
                    f"offset {offset} is outside blob {sha[:12]}… of {total} bytes: "
                    "restart the download from 0 (delete the partial file)"
                )
            fh.seek(offset)
        except BaseException:
            fh.close()
            raise
        return fh, total

    # --- writing -----------------------------------------------------------------------------------------
    def put_file(self, path: Path, *, link: bool = False) -> BlobRef:
        """Store one file; idempotent. ``link=True`` hardlinks instead of copying where the filesystem allows
        (only for files that will never be modified in place, e.g. a finished build's output)."""
        src = Path(path)
        if not src.is_file():
            raise NotFound(f"cannot add {src} to the blob store: not a regular file")
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix="put-", dir=tmp_dir)
        tmp = Path(tmp_name)
        try:
            if link and _try_link(src, tmp):
                os.close(fd)
                sha = _hash_path(tmp)
            else:
                with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                    sha = _copy_hashing(inp, out)
                    out.flush()
                    os.fsync(out.fileno())
            size = tmp.stat().st_size
            dest = self.blob_path(sha)
            if dest.is_file() and dest.stat().st_size == size:
                return BlobRef(sha, size)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
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
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix="put-", dir=tmp_dir)
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

    def put_folder(self, folder: Path, *, link: bool = False) -> list[FileEntry]:
        """Store every regular file under ``folder``; returns manifest entries (relative paths, sorted)."""
        root = Path(folder)
        if not root.is_dir():
            raise NotFound(f"cannot add {root} to the blob store: not a folder")
        entries = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            ref = self.put_file(path, link=link)
            entries.append(FileEntry(path.relative_to(root).as_posix(), ref.sha256, ref.size))
        log.info("stored %d files (%d bytes) of %s", len(entries), sum(e.size for e in entries), root)
        return entries

    def delete(self, sha: str) -> bool:
        """Remove a blob (garbage collection by the registry); True if it existed."""
        try:
            self.blob_path(sha).unlink()
            return True
        except FileNotFoundError:
            return False


def _try_link(src: Path, tmp: Path) -> bool:
    try:
        tmp.unlink()
        os.link(src, tmp)
        return True
    except OSError:
        return False


def _copy_hashing(inp: BinaryIO, out: BinaryIO) -> str:
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


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
