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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from tenacity import RetryCallState

from agent.install.space import DiskSpaceError, check_space, free_bytes
from agent.install.stream import ChunkCorrupted, FetchFn, Session, TransferProgress
from shared.errors import Cancelled, InstallError, NotFound, TransferError
from shared.manifest import FileEntry
from shared.retry import TRANSFER, Interrupted, Policy

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
# Refusals by a busy server (HTTP 503, RESOURCE_EXHAUSTED) in a row that count as one attempt without progress.
BUSY_PER_STALL = 30
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


def RetryPolicy(max_attempts: int = 8, initial_s: float = 0.2, max_s: float = 10.0, multiplier: float = 2.0) -> Policy:
    """The TRANSFER policy (shared/retry.py) with other limits; ``max_attempts`` counts consecutive attempts that
    moved no bytes. (The name and arguments of the class this replaced: bench/rollout.py and tests use them.)"""
    return TRANSFER.but(max_attempts=max_attempts, base_s=initial_s, cap_s=max_s, multiplier=multiplier)


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
    retry: Policy | None = None,
    cancel: threading.Event | None = None,
    progress_interval_s: float = 0.5,
) -> DownloadResult:
    """Download ``entry`` into ``dest_dir/<sha>``, resuming ``<sha>.part``; retries transient errors.

    Raises TransferError when retries run out (resumable later), IntegrityError when the controller serves a
    blob of another size, NotFound when it has no such blob, Cancelled when ``cancel`` is set.
    """
    retry = retry or TRANSFER
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
    stalls = _Stalls(state, retry.max_attempts)
    retrying = retry.retrying(
        f"download of {entry.path}",
        cancel,
        retry_on=(TransferError,),
        logger=log,
        stop=stalls.exhausted,
        wait=lambda rs: max(stalls.hint_s(rs), retry.delay(stalls.count)),
        before=stalls.begin,
        after=stalls.failed,
    )
    try:
        retrying(_stream, state, fetch, max_bytes_per_s)
    except Interrupted:
        raise Cancelled(f"download of {entry.path} cancelled") from None
    except TransferError as exc:
        raise TransferError(
            f"download of {entry.path} stopped at byte {state.pos} of {entry.size} after {stalls.count} attempts "
            f"without progress (last: {exc.message}); it resumes from there next time"
        ) from exc
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(part, final)
    state.report(force=True)
    retries = retrying.statistics.get("attempt_number", 1) - 1
    return DownloadResult(final, state.pos - first_offset, first_offset, retries, state.corrupt)


class _Stalls:
    """Counts consecutive attempts that moved no bytes (one that moved some counts as the first of a new run)."""

    def __init__(self, state: Session, limit: int) -> None:
        self.state, self.limit = state, limit
        self.count = 0
        self.busy = 0
        self._start = state.pos

    def begin(self, _: RetryCallState) -> None:
        self._start = self.state.pos

    def failed(self, rs: RetryCallState) -> None:
        if self.state.pos > self._start:
            self.count, self.busy = 1, 0
        elif not _busy(rs):
            self.count += 1
        else:  # a busy server said when to come back: one stall per BUSY_PER_STALL such refusals in a row
            self.busy += 1
            self.count += self.busy % BUSY_PER_STALL == 0

    def exhausted(self, _: RetryCallState) -> bool:
        return 0 < self.limit <= self.count

    @staticmethod
    def hint_s(rs: RetryCallState) -> float:
        """The controller's retry-after for the failed attempt (a floor for the wait, spread by up to a quarter
        so that refused agents do not all come back at once), else 0."""
        error = rs.outcome.exception() if rs.outcome is not None else None
        return float(getattr(error, "hint_s", 0.0)) * random.uniform(1.0, 1.25)


def _busy(rs: RetryCallState) -> bool:
    """The failed attempt was refused because the server was busy (HTTP 503, gRPC RESOURCE_EXHAUSTED)."""
    error = rs.outcome.exception() if rs.outcome is not None else None
    return bool(getattr(error, "busy", False))


class _RetryableRpc(TransferError):
    def __init__(self, message: str, hint_s: float, busy: bool = False) -> None:
        super().__init__(message)
        self.hint_s = hint_s  # the controller's retry-after, a floor for the wait
        self.busy = busy


def _stream(state: Session, fetch: FetchFn, max_bytes_per_s: int) -> None:
    """One attempt: streams from ``state.pos`` to the end. Transient failures are TransferErrors (retried)."""
    if state.pos >= state.entry.size:
        return
    try:
        state.stream_once(fetch, max_bytes_per_s)
    except grpc.RpcError as exc:
        entry = state.entry
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.NOT_FOUND:
            raise NotFound(f"the controller has no blob for {entry.path} ({entry.sha256[:12]}…): {details}") from exc
        if code not in RETRYABLE:
            raise InstallError(f"download of {entry.path} refused ({code}): {details}") from exc
        busy = code == grpc.StatusCode.RESOURCE_EXHAUSTED
        raise _RetryableRpc(f"{code.name if code else 'error'}: {details}", _retry_hint(exc), busy) from exc


def _retry_hint(exc: grpc.RpcError) -> float:
    try:
        for key, value in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
            if key == RETRY_AFTER_KEY:
                return int(value) / 1000.0
    except (AttributeError, ValueError, TypeError):
        pass
    return 0.0
