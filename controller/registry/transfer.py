"""Streaming blobs to agents: chunks from an offset with a crc32 each, an optional bandwidth limit, and a gate
on concurrent downloads so a fleet downloading at once cannot take every server thread.

Domain code only (no protobuf): :mod:`controller.registry.transfer_pb` wraps this for the gRPC servicer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from controller.registry.blobstore.base import BlobStore
from shared.errors import InvalidArgument, ResourceExhausted, Unavailable

try:  # zlib-ng's SIMD crc32 is ~15x faster than zlib's (same polynomial); optional
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - depends on the environment
    from zlib import crc32

log = logging.getLogger(__name__)

# 1 MiB measured best on loopback among 256 KiB..4 MiB (see bench/rollout.py); must stay under the client's
# max receive message size (gRPC default 4 MiB).
DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = (4 << 20) - (64 << 10)
# Trailing-metadata key carrying the server's retry hint (milliseconds) on RESOURCE_EXHAUSTED.
RETRY_AFTER_KEY = "retry-after-ms"


@dataclass(frozen=True)
class Chunk:
    offset: int
    data: bytes
    total_size: int
    crc32: int


class TransferBusy(ResourceExhausted):
    """Every download slot is taken; the client should retry after ``retry_after_s``."""

    def __init__(self, slots: int, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(
            f"all {slots} download slots of the controller are busy: retry in {retry_after_s:.1f} s "
            "(agents back off and retry on their own)"
        )


class _Slot:
    """One held download slot; ``release`` is idempotent (called by the stream's end and the RPC callback)."""

    def __init__(self, gate: DownloadGate) -> None:
        self._gate = gate
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._gate._release()


class DownloadGate:
    """Limits concurrent downloads to ``slots``; at most ``max_waiting`` more wait up to ``wait_s`` for a slot,
    the rest are refused at once with :class:`TransferBusy`.

    A gRPC sync server runs each stream on one thread of its pool for the stream's whole life, so keep
    ``slots + max_waiting`` well below the server's ``max_workers`` (e.g. a quarter each) and unary RPCs
    (heartbeats, reports) always find a free thread.
    """

    def __init__(self, slots: int = 4, max_waiting: int = 4, wait_s: float = 1.0, retry_after_s: float = 0.5):
        if slots < 1:
            raise InvalidArgument(f"download gate needs at least 1 slot, got {slots}")
        self.slots = slots
        self.max_waiting = max(0, max_waiting)
        self.wait_s = max(0.0, wait_s)
        self.retry_after_s = retry_after_s
        self._cond = threading.Condition()
        self._active = 0
        self._waiting = 0
        self.refused = 0

    @property
    def active(self) -> int:
        return self._active

    def acquire(self) -> _Slot:
        with self._cond:
            if self._active < self.slots:
                self._active += 1
                return _Slot(self)
            if self._waiting >= self.max_waiting or self.wait_s == 0:
                self.refused += 1
                raise TransferBusy(self.slots, self.retry_after_s)
            self._waiting += 1
            try:
                got = self._cond.wait_for(lambda: self._active < self.slots, timeout=self.wait_s)
            finally:
                self._waiting -= 1
            if not got:
                self.refused += 1
                raise TransferBusy(self.slots, self.retry_after_s)
            self._active += 1
            return _Slot(self)

    def _release(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify()


class BlobRanges:
    """An open blob and the ``(offset, length)`` of each chunk to send from ``offset`` to its end, paced to
    ``max_bps`` (0: no limit). Iterate once; the file is closed when the iteration ends or by :meth:`close`.

    ``local``: ``fh`` is the blob's own file (read with pread at blob offsets); otherwise it is a remote store's
    stream of the bytes from ``offset`` on (S3's ranged GET), read in order as the chunks go out."""

    def __init__(
        self, fh: BinaryIO, offset: int, total: int, chunk_size: int, max_bps: int, local: bool = True
    ) -> None:
        self.fh, self.offset, self.total = fh, offset, total
        self.chunk_size, self.max_bps, self.local = chunk_size, max_bps, local

    def fileno(self) -> int:
        return self.fh.fileno()

    def fill(self, buf: memoryview, pos: int) -> None:
        """Read the blob's bytes at ``pos`` into all of ``buf`` (chunks are asked for in order)."""
        if self.local:
            read_exact(self.fh.fileno(), buf, pos, self.total)
            return
        done = 0
        while done < len(buf):
            got = self.fh.readinto(buf[done:])  # type: ignore[attr-defined]
            if not got:
                raise Unavailable(
                    f"the blob store's stream ended at byte {pos + done} of {self.total}: retry the download"
                )
            done += got

    def close(self) -> None:
        self.fh.close()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start = time.monotonic()
        pos = self.offset
        try:
            while pos < self.total:
                if self.max_bps:
                    delay = start + (pos - self.offset) / self.max_bps - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                n = min(self.chunk_size, self.total - pos)
                yield pos, n
                pos += n
        finally:
            self.close()


def open_ranges(
    store: BlobStore, sha: str, offset: int = 0, chunk_size: int = DEFAULT_CHUNK, max_bytes_per_s: int = 0
) -> BlobRanges:
    """Open blob ``sha`` for streaming from ``offset``.

    Validation happens here, before the first chunk: unknown sha -> NotFound, malformed sha or an offset past
    the end -> InvalidArgument. ``max_bytes_per_s`` > 0 paces the stream (smaller chunks, sleeps between).
    """
    if chunk_size <= 0 or chunk_size > MAX_CHUNK:
        raise InvalidArgument(f"chunk size {chunk_size} must be within 1..{MAX_CHUNK} bytes")
    fh, total, local = _open_file(store, sha, int(offset))
    max_bps = max(0, int(max_bytes_per_s or 0))
    if max_bps:
        # About 8 chunks a second keeps the pacing smooth; never below 16 KiB a chunk.
        chunk_size = max(16 << 10, min(chunk_size, max_bps // 8))
    return BlobRanges(fh, int(offset), total, chunk_size, max_bps, local)


def _open_file(store: BlobStore, sha: str, offset: int) -> tuple[BinaryIO, int, bool]:
    """The blob from ``offset``: its own file on the filesystem backend (the fast path: pread at blob offsets,
    ``local`` True), else the remote store's stream of the range (agents too old for presigned URLs), read in
    order as the chunks go out, without a copy on the controller's disk."""
    fh, total = store.open_range(sha, offset)
    return fh, total, store.local_path(sha) is not None


def read_exact(fd: int, buf: memoryview, pos: int, total: int) -> None:
    """Fill ``buf`` from file offset ``pos`` (no copy through Python); a blob shorter than it was when opened
    is InvalidArgument."""
    done = 0
    while done < len(buf):
        got = os.preadv(fd, [buf[done:]], pos + done)
        if got <= 0:
            raise InvalidArgument(f"blob shrank while streaming: ended at {pos + done} of {total} bytes")
        done += got


def iter_chunks(
    store: BlobStore,
    sha: str,
    offset: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    max_bytes_per_s: int = 0,
) -> Iterator[Chunk]:
    """Chunks of blob ``sha`` from ``offset`` to its end; validates at once, like :func:`open_ranges`."""
    return read_chunks(open_ranges(store, sha, offset, chunk_size, max_bytes_per_s))


def read_chunks(ranges: BlobRanges) -> Iterator[Chunk]:
    """The chunks of ``ranges`` read from its file (or its remote stream)."""
    if not ranges.local:
        for pos, n in ranges:
            buf = bytearray(n)
            ranges.fill(memoryview(buf), pos)
            yield Chunk(pos, bytes(buf), ranges.total, crc32(buf))
        return
    fd = ranges.fileno()
    for pos, n in ranges:
        data = os.pread(fd, n, pos)
        if len(data) < n:  # a short read happens only at the end of a file: read the rest or fail
            rest = bytearray(n - len(data))
            read_exact(fd, memoryview(rest), pos + len(data), ranges.total)
            data += rest
        yield Chunk(pos, data, ranges.total, crc32(data))
