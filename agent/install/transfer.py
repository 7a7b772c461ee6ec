"""Resumable download of one content-addressed file.

The partial file ``<dest>/<sha>.part`` is the download's state: its size is the offset to resume from, so an
agent killed mid-download continues where it stopped. Each chunk's crc32 is checked before it is written (a
corrupted chunk is dropped and requested again); when the size is complete the file is fsynced and renamed to
``<dest>/<sha>``. Its sha256 is checked later, in the install's VERIFY step.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.install.space import DiskSpaceError, check_space, free_bytes
from agent.install.stream import ChunkCorrupted, FetchFn, Session, TransferProgress
from shared.errors import Cancelled, InstallError, NotFound, TransferError
from shared.manifest import FileEntry

log = logging.getLogger(__name__)

__all__ = [
    "ChunkCorrupted",
    "DiskSpaceError",
    "DownloadResult",
    "FetchFn",
    "RetryPolicy",
    "TransferProgress",
    "check_space",
    "download_file",
    "free_bytes",
    "part_path",
]
RETRY_AFTER_KEY = "retry-after-ms"  # same key as controller.registry.transfer.RETRY_AFTER_KEY
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


@dataclass
class RetryPolicy:
    """Backoff for transient failures; ``max_attempts`` counts consecutive attempts that moved no bytes."""

    max_attempts: int = 8
    initial_s: float = 0.2
    max_s: float = 10.0
    multiplier: float = 2.0

    def delay(self, attempt: int, hint_s: float = 0.0) -> float:
        base = min(self.max_s, self.initial_s * self.multiplier ** max(0, attempt - 1))
        return max(hint_s, base) * random.uniform(0.75, 1.25)


@dataclass
class DownloadResult:
    path: Path
    transferred: int
    resumed_from: int
    retries: int = 0
    corrupt_chunks: int = 0


def part_path(dest_dir: Path, sha: str) -> Path:
    return Path(dest_dir) / f"{sha}.part"


def download_file(
    fetch: FetchFn,
    entry: FileEntry,
    dest_dir: Path,
    progress: Callable[[TransferProgress], None] | None = None,
    *,
    max_bytes_per_s: int = 0,
    retry: RetryPolicy | None = None,
    cancel: threading.Event | None = None,
    progress_interval_s: float = 0.5,
) -> DownloadResult:
    """Download ``entry`` into ``dest_dir/<sha>``, resuming ``<sha>.part``; retries transient errors.

    Raises TransferError when retries run out (resumable later), IntegrityError when the controller serves a
    blob of another size, NotFound when it has no such blob, Cancelled when ``cancel`` is set.
    """
    retry = retry or RetryPolicy()
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / entry.sha256
    if final.is_file() and final.stat().st_size == entry.size:
        return DownloadResult(final, 0, entry.size)
    part = part_path(dest_dir, entry.sha256)
    first_offset = part.stat().st_size if part.exists() else 0
    if first_offset > entry.size:
        log.warning("partial %s is larger than the file (%d > %d): starting over", part, first_offset, entry.size)
        part.unlink()
        first_offset = 0
    if first_offset:
        log.info("resuming %s (%s) at byte %d of %d", entry.path, entry.sha256[:12], first_offset, entry.size)
    state = Session(entry, part, first_offset, progress, progress_interval_s, cancel)
    attempts = retries = 0
    while state.pos < entry.size:
        before = state.pos
        try:
            state.stream_once(fetch, max_bytes_per_s)
            continue
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(
                    f"the controller has no blob for {entry.path} ({entry.sha256[:12]}…): {details}"
                ) from exc
            if code not in RETRYABLE:
                raise InstallError(f"download of {entry.path} refused ({code}): {details}") from exc
            hint = _retry_hint(exc)
            last = f"{code.name if code else 'error'}: {details}"
        except ChunkCorrupted as exc:
            hint, last = 0.0, exc.message
        except TransferError as exc:
            hint, last = 0.0, exc.message
        attempts = 1 if state.pos > before else attempts + 1
        retries += 1
        if attempts >= retry.max_attempts:
            raise TransferError(
                f"download of {entry.path} stopped at byte {state.pos} of {entry.size} after "
                f"{attempts} attempts without progress (last: {last}); it resumes from there next time"
            )
        delay = retry.delay(attempts, hint)
        log.info("download of %s: %s; retry %d in %.2f s", entry.path, last, attempts, delay)
        if cancel is not None and cancel.wait(delay):
            raise Cancelled(f"download of {entry.path} cancelled")
        if cancel is None:
            time.sleep(delay)
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(part, final)
    state.report(force=True)
    return DownloadResult(final, state.pos - first_offset, first_offset, retries, state.corrupt)


def _retry_hint(exc: grpc.RpcError) -> float:
    try:
        for key, value in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
            if key == RETRY_AFTER_KEY:
                return int(value) / 1000.0
    except (AttributeError, ValueError, TypeError):
        pass
    return 0.0
