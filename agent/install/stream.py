"""One download stream into a partial file, with the checks and the writing on a second thread.

The receiving thread takes each chunk from gRPC and checks its offset, size and crc32 (while the data is still
in its CPU cache); a writer thread appends it to ``<sha>.part``. The two overlap (gRPC hands out the next chunk
while the previous one is written), which on loopback is worth ~1.5x. ``pos`` is only advanced after a chunk
is written, so the partial file's size stays the offset to resume from; a corrupted chunk is never queued.

The writer also starts the kernel's writeback of every few MiB as soon as they are written
(``sync_file_range``, Linux), so the disk works while the transfer goes on and the fsync that completes a file
has little left to wait for: on a disk writing ~2 GB/s that fsync alone was as long as the whole transfer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import Cancelled, IntegrityError, TransferError
from shared.manifest import FileEntry

try:  # zlib-ng's SIMD crc32 is ~15x faster than zlib's (same polynomial); optional
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - depends on the environment
    from zlib import crc32

log = logging.getLogger(__name__)

FetchFn = Callable[[str, int, int], Iterable[Any]]
QUEUE_DEPTH = 4  # chunks in flight between the receiving and the writing thread
WRITEBACK_BYTES = 8 << 20  # start writing back to disk after this many new bytes
SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of dirty pages in the range, do not wait


class ChunkCorrupted(TransferError):
    """A chunk's crc32 did not match its data: it was not written and is requested again."""


@dataclass
class TransferProgress:
    sha256: str
    path: str
    done: int
    total: int
    transferred: int
    resumed_from: int
    rate_bps: float


class Session:
    """Downloads of one file across retries; ``pos`` always equals the bytes safely appended."""

    def __init__(
        self,
        entry: FileEntry,
        part: Path,
        offset: int,
        progress: Callable[[TransferProgress], None] | None,
        interval_s: float,
        cancel: threading.Event | None,
    ) -> None:
        self.entry, self.part, self.first, self.pos = entry, part, offset, offset
        self.progress, self.interval_s, self.cancel = progress, interval_s, cancel
        self.started = time.monotonic()
        self.last_report = 0.0
        self.corrupt = 0

    def stream_once(self, fetch: FetchFn, max_bps: int) -> None:
        """One request from ``pos``; returns when the file is complete, raises when the stream broke."""
        entry = self.entry
        stream = fetch(entry.sha256, self.pos, int(max_bps))
        writer = _Writer(self)
        expected = self.pos
        try:
            for chunk in stream:
                if self.cancel is not None and self.cancel.is_set():
                    raise Cancelled(f"download of {entry.path} cancelled")
                if writer.error is not None:
                    break
                self._check_chunk(chunk, expected)
                writer.put(chunk)
                expected += len(chunk.data)
        except BaseException:
            _cancel(stream)
            writer.close()
            raise
        writer.close()
        if writer.error is not None:
            _cancel(stream)
            raise writer.error
        if self.pos < entry.size:
            raise TransferError(f"stream of {entry.path} ended at byte {self.pos} of {entry.size}")

    def _check_chunk(self, chunk: Any, expected: int) -> None:
        """A chunk is written only if it belongs to this file, lands at ``expected`` and passes its crc32."""
        entry = self.entry
        if chunk.total_size != entry.size:
            raise IntegrityError(
                f"the controller serves {entry.sha256[:12]}… with {chunk.total_size} bytes but the "
                f"manifest says {entry.size}: refusing {entry.path}"
            )
        if chunk.offset != expected:
            raise TransferError(f"chunk at offset {chunk.offset}, expected {expected}")
        if expected + len(chunk.data) > entry.size:
            raise IntegrityError(f"the controller sent more than {entry.size} bytes of {entry.path}")
        if chunk.crc32 is not None and crc32(chunk.data) != chunk.crc32:  # None: TLS guarded it (http_fetch)
            self.corrupt += 1
            raise ChunkCorrupted(f"chunk at offset {chunk.offset} of {entry.path} failed its crc32 check: not written")

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is None or (not force and now - self.last_report < self.interval_s):
            return
        self.last_report = now
        moved = self.pos - self.first
        rate = moved / max(1e-6, now - self.started)
        self.progress(
            TransferProgress(self.entry.sha256, self.entry.path, self.pos, self.entry.size, moved, self.first, rate)
        )


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).sync_file_range
    except (OSError, AttributeError):  # no such libc function: the final fsync does all the work
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


class Writeback:
    """Starts writeback of each ``WRITEBACK_BYTES`` appended to ``fd`` from ``pos`` on (advisory: a failure
    only leaves the work to the final fsync)."""

    def __init__(self, fd: int, pos: int) -> None:
        self.fd, self.started = fd, pos

    def wrote(self, pos: int) -> None:
        if _sync_file_range is not None and pos - self.started >= WRITEBACK_BYTES:
            _sync_file_range(self.fd, self.started, pos - self.started, SYNC_FILE_RANGE_WRITE)
            self.started = pos


def _write_all(fd: int, data: Any) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Writer:
    """Appends chunks on its own thread; after an error it keeps draining without writing."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_DEPTH)
        self._fd = os.open(session.part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)  # closed by the thread
        self._writeback = Writeback(self._fd, session.pos)
        self._thread = threading.Thread(target=self._run, name="download-writer", daemon=True)
        self._thread.start()

    def put(self, chunk: Any) -> None:
        self._queue.put(chunk)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        s = self.session
        try:
            while (chunk := self._queue.get()) is not None:
                if self.error is not None:
                    continue
                data = chunk.data
                _write_all(self._fd, data)
                s.pos += len(data)
                self._writeback.wrote(s.pos)
                s.report()
        except BaseException as exc:  # disk full, I/O error: surfaces in the receiving thread
            self.error = exc
            while self._queue.get() is not None:
                pass
        finally:
            os.close(self._fd)


def _cancel(stream: Any) -> None:
    cancel = getattr(stream, "cancel", None)
    if callable(cancel):
        cancel()
