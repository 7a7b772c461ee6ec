"""One handler per state of the install machine. Each runs again from the top when the agent restarts in its
state, so each is idempotent: it checks what is already on disk before doing anything."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from agent.install.layout import Layout, check_file_path, fsync_tree, link_or_copy
from agent.install.statefile import InstallRecord
from agent.install.states import Event, InstallProgress, State
from agent.install.transfer import FetchFn, TransferProgress, check_space, download_file, part_path
from shared.errors import Cancelled, InstallError, IntegrityError, SlmopsError, TransferError
from shared.manifest import FileEntry, Manifest, verify_file
from shared.retry import Policy

log = logging.getLogger(__name__)

ActivateFn = Callable[[Path], None]
HealthCheckFn = Callable[[Path, Manifest], tuple[bool, str]]


class InstallMachine(Protocol):
    """What the handlers use of the install machine (``machine.InstallMachine`` implements it; steps never
    import the machine, which drives them)."""

    layout: Layout
    fetch: FetchFn
    activate: ActivateFn
    health_check: HealthCheckFn
    deactivate: Callable[[], None] | None
    keep_versions: int
    reserve_bytes: int
    retry: Policy
    verify_retries: int
    cancel_event: threading.Event

    @property
    def record(self) -> InstallRecord: ...

    def manifest(self, check_signature: bool = True) -> Manifest: ...

    def save(self) -> None: ...

    def emit_progress(self, progress: InstallProgress) -> None: ...


Handler = Callable[[InstallMachine], Event]


def _unique(files: list[FileEntry]) -> dict[str, FileEntry]:
    return {f.sha256: f for f in files}


def download(m: InstallMachine) -> Event:
    rec, layout = m.record, m.layout
    manifest = m.manifest()  # checks the signature again
    for f in manifest.files:
        check_file_path(f.path)
    unique = _unique(manifest.files)
    exclude = set(rec.no_reuse)
    local_files = layout.local_files()
    needed: list[FileEntry] = []
    for sha, entry in unique.items():
        blob = layout.blob(sha)
        if blob.is_file() and blob.stat().st_size == entry.size:
            continue
        local = None if sha in exclude else local_files.get((sha, entry.size))
        if local is not None and local != blob:
            link_or_copy(local, blob)
            rec.stats["reused_bytes"] = rec.stats.get("reused_bytes", 0) + entry.size
            log.info("%s: reusing local %s (%d bytes)", rec.ref, entry.path, entry.size)
            continue
        needed.append(entry)
    partial = sum(
        part_path(layout.downloads, e.sha256).stat().st_size
        for e in needed
        if part_path(layout.downloads, e.sha256).exists()
    )
    total = sum(e.size for e in needed)
    check_space(layout.downloads, max(0, total - partial), m.reserve_bytes)
    done_before = 0
    for entry in needed:

        def on_progress(p: TransferProgress, base: int = done_before) -> None:
            m.emit_progress(InstallProgress(State.DOWNLOAD, p.path, base + p.done, total, p.rate_bps))

        result = download_file(
            m.fetch,
            entry,
            layout.downloads,
            on_progress,
            max_bytes_per_s=rec.max_bytes_per_s,
            retry=m.retry,
            cancel=m.cancel_event,
        )
        done_before += entry.size
        rec.stats["downloaded_bytes"] = rec.stats.get("downloaded_bytes", 0) + result.transferred
        if result.resumed_from:
            rec.stats["resumed_from_bytes"] = rec.stats.get("resumed_from_bytes", 0) + result.resumed_from
        rec.stats["corrupt_chunks"] = rec.stats.get("corrupt_chunks", 0) + result.corrupt_chunks
        m.save()
    return Event.OK


def verify(m: InstallMachine) -> Event:
    rec, layout = m.record, m.layout
    manifest = m.manifest()
    unique = _unique(manifest.files)
    bad = []
    for i, (sha, entry) in enumerate(unique.items()):
        blob = layout.blob(sha)
        try:
            verify_file(blob, entry)
        except IntegrityError as exc:
            bad.append(exc.message)
            blob.unlink(missing_ok=True)
            if sha not in rec.no_reuse:
                rec.no_reuse.append(sha)
        m.emit_progress(InstallProgress(State.VERIFY, entry.path, i + 1, len(unique)))
    if not bad:
        return Event.OK
    rec.verify_failures += 1
    rec.error = "; ".join(bad)
    if rec.verify_failures <= m.verify_retries:
        log.warning("%s: %s; downloading those files again", rec.ref, rec.error)
        return Event.RETRY
    raise IntegrityError(f"{rec.ref}: files failed their sha256 check again, refusing the version: {rec.error}")


def install(m: InstallMachine) -> Event:
    rec, layout = m.record, m.layout
    manifest = m.manifest()
    ref = rec.ref
    final = layout.version_dir(ref)
    if final.exists() and not layout.is_complete(ref):
        layout.remove_version(ref)
    if not final.exists():
        staging = layout.staging_dir(ref)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for i, entry in enumerate(manifest.files):
            dest = staging / check_file_path(entry.path)
            src = layout.blob(entry.sha256)
            if not src.is_file():
                raise InstallError(f"{ref}: downloaded file {entry.path} vanished before install; retry the install")
            link_or_copy(src, dest)
            m.emit_progress(InstallProgress(State.INSTALL, entry.path, i + 1, len(manifest.files)))
        layout.write_sidecar(staging, rec.manifest_json, rec.signature)
        fsync_tree(staging)
        staging.replace(final)
        fsync_tree(final.parent)
        log.info("%s installed in %s", ref, final)
    layout.clear_downloads({f.sha256 for f in manifest.files})
    return Event.OK


def activate(m: InstallMachine) -> Event:
    rec, layout = m.record, m.layout
    layout.write_pointer("current", rec.ref)
    m.activate(layout.version_dir(rec.ref))
    return Event.OK


def health_check(m: InstallMachine) -> Event:
    rec = m.record
    ok, message = m.health_check(m.layout.version_dir(rec.ref), m.manifest())
    if ok:
        return Event.OK
    rec.error = f"health check of {rec.ref} failed: {message}"
    return Event.FAIL


def commit(m: InstallMachine) -> Event:
    rec, layout = m.record, m.layout
    prior = rec.prior_ref
    if prior is not None and prior != rec.ref and layout.version_dir(prior).exists():
        layout.write_pointer("previous", prior)
    protect = {r for r in (layout.read_pointer("current"), layout.read_pointer("previous")) if r}
    try:
        layout.prune(m.keep_versions, protect)
        layout.clear_downloads(keep_partials=False)
    except OSError as exc:  # pruning is housekeeping: never fail a healthy install for it
        log.warning("pruning after %s failed: %s", rec.ref, exc)
    return Event.OK


def rollback(m: InstallMachine) -> Event:
    rec, layout = m.record, m.layout
    if rec.kind == "rollback":
        target = rec.target_ref
        if target is None or not layout.is_complete(target):
            raise InstallError(f"cannot roll back: version {target} is not installed on this agent")
        layout.write_pointer("current", target)
        m.activate(layout.version_dir(target))
        if rec.prior_ref is not None and rec.prior_ref != target:
            layout.write_pointer("previous", rec.prior_ref)
        return Event.RESTORED
    prior = rec.prior_ref
    if prior is not None and layout.is_complete(prior):
        layout.write_pointer("current", prior)
        m.activate(layout.version_dir(prior))
        log.warning("%s rolled back to %s: %s", rec.ref, prior, rec.error)
    else:
        layout.write_pointer("current", None)
        if m.deactivate is not None:
            m.deactivate()
        log.warning("%s failed and no earlier version is installed: nothing active (%s)", rec.ref, rec.error)
    if rec.ref not in {prior, layout.read_pointer("previous")}:
        layout.remove_version(rec.ref)
    return Event.REVERTED


def cleanup(m: InstallMachine) -> Event:
    rec, layout = m.record, m.layout
    shutil.rmtree(layout.staging_dir(rec.ref), ignore_errors=True)
    keep = {r for r in (rec.prior_ref, layout.read_pointer("current"), layout.read_pointer("previous")) if r}
    if rec.ref not in keep and layout.version_dir(rec.ref).exists():
        layout.remove_version(rec.ref)
    shas = None
    if rec.manifest_b64:
        try:
            shas = {f.sha256 for f in m.manifest(check_signature=False).files}
        except Exception:  # a manifest that never parsed: clear every download
            shas = None
    freed = layout.clear_downloads(shas, keep_partials=rec.keep_partials)
    log.info("cleaned up after %s (%d bytes freed%s)", rec.ref, freed, ", partial downloads kept" * rec.keep_partials)
    return Event.OK


HANDLERS: dict[State, Handler] = {
    State.DOWNLOAD: download,
    State.VERIFY: verify,
    State.INSTALL: install,
    State.ACTIVATE: activate,
    State.HEALTH_CHECK: health_check,
    State.COMMIT: commit,
    State.ROLLBACK: rollback,
    State.CLEANUP: cleanup,
}


def outcome(state: State, event: Event, rec: InstallRecord) -> tuple[Event, str]:
    """The message that goes with the event a handler returned."""
    if event == Event.RETRY:
        return event, rec.error
    if event == Event.FAIL:
        rec.retryable = rec.retryable and state != State.HEALTH_CHECK
        return event, rec.error
    if event == Event.REVERTED:
        return event, f"rolled back to {rec.prior_ref or 'nothing'}: {rec.error}"
    return event, ""


def error_outcome(state: State, exc: SlmopsError, rec: InstallRecord, paused: bool) -> tuple[Event | None, str]:
    """The event a handler's error means (``None``: the machine was paused), and whether partials are kept."""
    if isinstance(exc, Cancelled):
        rec.keep_partials = paused
        if paused:
            return None, exc.message
        return Event.ABORT if state not in (State.CLEANUP, State.ROLLBACK) else Event.FAIL, exc.message
    if isinstance(exc, TransferError):
        rec.keep_partials = True
        return (Event.RETRY if state == State.DOWNLOAD else Event.FAIL), exc.message
    rec.keep_partials = False
    if isinstance(exc, IntegrityError):
        rec.retryable = False
    return Event.FAIL, exc.message
