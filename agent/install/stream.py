"""One download stream into a partial file, with the checks and the writing on a second thread.

The receiving thread takes each chunk from gRPC and checks its offset and size; a writer thread checks its
crc32 and appends it to ``<sha>.part``. The two overlap (gRPC hands out the next chunk while the previous one
is written), which on loopback is worth ~1.5x. ``pos`` is only advanced after a chunk is written, so the
partial file's size stays the offset to resume from; chunks after a corrupted one are dropped unwritten.
"""

from __future__ import annotations

import logging
import queue
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
                if chunk.total_size != entry.size:
                    raise IntegrityError(
                        f"the controller serves {entry.sha256[:12]}… with {chunk.total_size} bytes but the "
                        f"manifest says {entry.size}: refusing {entry.path}"
                    )
                if chunk.offset != expected:
                    raise TransferError(f"chunk at offset {chunk.offset}, expected {expected}")
                size = len(chunk.data)
                if expected + size > entry.size:
                    raise IntegrityError(f"the controller sent more than {entry.size} bytes of {entry.path}")
                writer.put(chunk)
                expected += size
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


class _Writer:
    """Checks and appends chunks on its own thread; after an error it keeps draining without writing."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_DEPTH)
        self._fh = open(session.part, "ab")  # noqa: SIM115 - closed by the thread
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
                if crc32(data) != chunk.crc32:
                    s.corrupt += 1
                    self.error = ChunkCorrupted(
                        f"chunk at offset {chunk.offset} of {s.entry.path} failed its crc32 check: not written"
                    )
                    continue
                self._fh.write(data)
                s.pos += len(data)
                s.report()
        except BaseException as exc:  # disk full, I/O error: surfaces in the receiving thread
            self.error = exc
            while self._queue.get() is not None:
                pass
        finally:
            self._fh.close()


def _cancel(stream: Any) -> None:
    cancel = getattr(stream, "cancel", None)
    if callable(cancel):
        cancel()
