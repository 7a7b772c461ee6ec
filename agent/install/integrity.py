"""Installed model files checked against their signed manifest: at agent start and in a periodic scrub.

Files are verified when they are downloaded (the install machine's VERIFY state), but a disk, a careless
operator or a bad sector can change them afterwards, and a model with 8 KB of garbage in its weights still
loads, passes a short golden check and answers wrongly. So the agent checks again:

- **at start, before loading**: the current version's sidecar manifest must verify against the controller key
  pinned at enrollment, then every file it lists must exist with its size and **full sha256** (not size+mtime:
  bit rot keeps both). Hashing runs at about 1 GB/s (measured: a 100 MiB file in 0.09 s, one core of an AMD
  EPYC with SHA extensions, hashlib, page cache warm) and the load that follows reads the same pages, so a
  model of a few GB adds seconds to a start. A device whose CPU hashes slowly (no SHA instructions: about
  200 MB/s) still checks a 4 GB model in about 20 s, once per start;
- **while running**, a full scrub of the current version (and of the previous one, the rollback target) every
  ``AgentSettings.scrub_interval_s`` (default 24 h, 0 = off), counted from the last full check. It runs on the
  agent's install thread, between installs, so it never races an install that moves pointers or prunes
  folders; hashlib releases the GIL, so serving threads keep running meanwhile.

When the current version fails (``IntegrityGuard.check``):

1. the error log names the version and every damaged file; the damaged files are deleted (nothing can load or
   reuse them; the intact files stay, to be reused);
2. the previous version, if it verifies too, is made current and serves meanwhile; otherwise nothing serves;
3. the version is installed again through the install machine (``InstallMachine.reinstall``) from its
   own signed manifest: only the damaged files are downloaded, then VERIFY, INSTALL, ACTIVATE, HEALTH_CHECK
   and COMMIT run as in any upgrade. Its first transition carries the finding to the controller
   ("installed files of m:2 failed their sha256 check at start: model.onnx.data (sha256 ... does not match
   the manifest (...)); downloading them again (m:1 serves meanwhile)"); if the download or the health check
   fails, the machine reports CLEANUP or ROLLBACK and FAILED for that version (the controller marks the
   rollout target failed) and the previous version stays current. When the sidecar manifest itself is
   unusable the whole folder is deleted and the version fails at once (REJECTED); the controller's next
   desired state brings it back.

Repair-first rather than rollback-only: a bit flip is the device's fault, not the version's, so the device
should end up on the version the controller chose; falling back while downloading keeps it serving a verified
model, as during any upgrade. A damaged previous version found by the scrub only loses its damaged files: a
later rollback to it downloads them again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.install.layout import SIDECAR, Layout, check_file_path, public_ref
from agent.install.states import ModelRef
from shared.errors import SlmopsError
from shared.manifest import Manifest, sha256_file, verify

if TYPE_CHECKING:
    from agent.install.machine import InstallMachine

log = logging.getLogger(__name__)

CHUNK = 4 << 20
AT_START = "at start"
IN_SCRUB = "in the periodic scrub"


@dataclass(frozen=True)
class Damage:
    path: str  # as the manifest names it; ".slmops/manifest.json" when the manifest itself is unusable
    problem: str
    sha256: str = ""  # the manifest's hash of the file ("" for the manifest itself)

    def __str__(self) -> str:
        return f"{self.path} ({self.problem})"


@dataclass
class Verification:
    ref: ModelRef
    manifest: Manifest | None
    damaged: list[Damage] = field(default_factory=list)
    checked_bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.damaged

    def describe(self) -> str:
        """The damaged files for a log line or a report: ``model.onnx.data (sha256 ... does not match ...)``."""
        return ", ".join(map(str, self.damaged))

    def summary(self) -> str:
        files = len(self.manifest.files) if self.manifest else 0
        mb = self.checked_bytes / 1e6
        rate = f", {mb / self.seconds:.0f} MB/s" if self.seconds > 0 else ""
        return f"{self.ref}: {files} files, {mb:.1f} MB hashed in {self.seconds:.2f} s{rate}"


def _signed_manifest(layout: Layout, ref: ModelRef, key_pem: bytes) -> Manifest:
    """The version's sidecar manifest, its signature checked with the pinned key; raises on any problem."""
    manifest = verify(*layout.read_sidecar(layout.version_dir(ref)), key_pem)
    if (manifest.name, manifest.version) != (ref.name, public_ref(ref).version):
        raise SlmopsError(f"it describes {manifest.ref}, not this folder")
    for entry in manifest.files:
        check_file_path(entry.path)
    return manifest


def verify_version(
    layout: Layout, ref: ModelRef, key_pem: bytes, *, cancel: threading.Event | None = None
) -> Verification:
    """Check ``ref``'s installed files against its signed manifest: presence, size, full sha256.

    Never raises for what it finds (a damaged or unreadable file is a :class:`Damage`); raises Cancelled when
    ``cancel`` is set while it hashes.
    """
    started = time.perf_counter()
    try:
        manifest = _signed_manifest(layout, ref, key_pem)
    except (OSError, SlmopsError) as exc:
        problem = exc.message if isinstance(exc, SlmopsError) else f"unreadable: {exc}"
        return Verification(ref, None, [Damage(f"{SIDECAR}/manifest.json", f"installed manifest: {problem}")])
    result = Verification(ref, manifest)
    folder = layout.version_dir(ref)
    for entry in manifest.files:
        path = folder / entry.path
        try:
            size = path.stat().st_size
            if size != entry.size:
                result.damaged.append(Damage(entry.path, f"size {size} != {entry.size} in the manifest", entry.sha256))
                continue
            actual = sha256_file(path, cancel)
        except FileNotFoundError:
            result.damaged.append(Damage(entry.path, "missing", entry.sha256))
            continue
        except OSError as exc:
            result.damaged.append(Damage(entry.path, f"unreadable: {exc}", entry.sha256))
            continue
        result.checked_bytes += size
        if actual != entry.sha256:
            problem = f"sha256 {actual[:12]}… does not match the manifest ({entry.sha256[:12]}…)"
            result.damaged.append(Damage(entry.path, problem, entry.sha256))
    result.seconds = time.perf_counter() - started
    return result


class ScrubSchedule:
    """When the next full scrub is due: ``interval_s`` after the last full check (0 = never)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = max(0.0, float(interval_s))
        self._clock = clock
        self._last = clock()

    def seconds_left(self) -> float | None:
        """Seconds until the scrub is due (0.0 = now), None when scrubbing is off."""
        if not self.interval_s:
            return None
        return max(0.0, self._last + self.interval_s - self._clock())

    def done(self) -> None:
        self._last = self._clock()


class IntegrityGuard:
    """Verifies the installed versions and hands a damaged current version to the install machine.

    Call :meth:`check` on the thread that drives ``machine`` (it is not thread-safe), while it is idle.
    """

    def __init__(
        self, machine: InstallMachine, *, max_bytes_per_s: int = 0, cancel: threading.Event | None = None
    ) -> None:
        self.machine = machine
        self.layout = machine.layout
        self.max_bytes_per_s = max_bytes_per_s
        self.cancel = cancel

    def verify(self, ref: ModelRef) -> Verification:
        return verify_version(self.layout, ref, self.machine.key_pem, cancel=self.cancel)

    def check(self, when: str = AT_START) -> Verification | None:
        """Verify the current version (and in a scrub the previous one); repair the current one when damaged.

        Returns the current version's verification (None when there is no current version).
        """
        current = self.layout.read_pointer("current")
        previous = self._scrub_previous(current) if when == IN_SCRUB else None
        if current is None:
            return None
        result = self.verify(current)
        if result.ok:
            log.info("installed files verified %s: %s", when, result.summary())
            return result
        self._repair(result, when, previous)
        return result

    def _scrub_previous(self, current: ModelRef | None) -> Verification | None:
        """Verify the previous version (deleting what failed); returns its verification, None without one."""
        previous = self.layout.read_pointer("previous")
        if previous is None or previous == current or not self.layout.version_dir(previous).is_dir():
            return None
        result = self.verify(previous)
        if result.ok:
            log.info("previous version verified %s: %s", IN_SCRUB, result.summary())
            return result
        log.error(
            "installed files of the previous version %s failed their sha256 check %s: %s; deleted them, a "
            "rollback to it downloads them again",
            previous,
            IN_SCRUB,
            result.describe(),
        )
        self._quarantine(result)
        return result

    def _quarantine(self, result: Verification) -> None:
        """Delete what failed: the damaged files, or the whole version when its manifest is unusable."""
        if result.manifest is None:
            self.layout.remove_version(result.ref)
            return
        folder = self.layout.version_dir(result.ref)
        for damage in result.damaged:
            (folder / damage.path).unlink(missing_ok=True)

    def _intact_previous(self, damaged: ModelRef, scrubbed: Verification | None = None) -> Verification | None:
        """The previous version's (passed) verification when it is installed and intact, else None; ``scrubbed``:
        this scrub's verification of it (not hashed again)."""
        previous = self.layout.read_pointer("previous")
        if previous is None or previous == damaged or not self.layout.version_dir(previous).is_dir():
            return None
        if scrubbed is not None and scrubbed.ref == previous:
            return scrubbed if scrubbed.ok else None  # a failed one was quarantined and logged by the scrub
        result = self.verify(previous)
        if result.ok:
            return result
        log.error("the previous version %s cannot serve meanwhile: %s", previous, result.describe())
        self._quarantine(result)
        return None

    def _repair(self, result: Verification, when: str, scrubbed: Verification | None = None) -> None:
        ref = result.ref
        message = f"installed files of {public_ref(ref)} failed their sha256 check {when}: {result.describe()}"
        log.error("%s", message)
        self._quarantine(result)
        try:
            manifest_json, signature = self.layout.read_sidecar(self.layout.version_dir(ref))
        except OSError:
            manifest_json = signature = b""
        fallback = self._serve_meanwhile(ref, self._intact_previous(ref, scrubbed))
        meanwhile = f"{public_ref(fallback)} serves meanwhile" if fallback else "nothing serves meanwhile"
        message += f"; downloading them again ({meanwhile})" if manifest_json else f"; {meanwhile}"
        last = self.machine.snapshot.record
        same = last is not None and public_ref(last.ref) == public_ref(ref)
        final = self.machine.reinstall(
            ref,
            manifest_json,
            signature,
            message,
            prior=fallback,
            rollout_id=last.rollout_id if same and last else "",
            rollout_attempt=last.rollout_attempt if same and last else 0,
            no_reuse={d.sha256 for d in result.damaged if d.sha256},
            max_bytes_per_s=self.max_bytes_per_s,
        )
        log.info("repair of %s ended in %s; current version: %s", ref, final, self.layout.read_pointer("current"))

    def _serve_meanwhile(self, damaged: ModelRef, verified: Verification | None) -> ModelRef | None:
        """Make the verified fallback current and serve it (health-checked), or serve nothing; returns what
        serves."""
        layout, machine = self.layout, self.machine
        fallback = verified.ref if verified is not None else None
        layout.write_pointer("current", fallback)
        if layout.read_pointer("previous") in (damaged, fallback):
            layout.write_pointer("previous", None)  # no older version is known; COMMIT sets it again
        if verified is not None and verified.manifest is not None:
            folder = layout.version_dir(verified.ref)
            try:
                machine.activate(folder)
                ok, health = machine.health_check(folder, verified.manifest)
                log.log(logging.INFO if ok else logging.WARNING, "%s serves meanwhile: %s", fallback, health)
                return fallback
            except Exception as exc:  # an injected callable failed: serve nothing rather than the damaged version
                log.error("cannot serve %s while %s is repaired: %s", fallback, damaged, exc)
                layout.write_pointer("current", None)
        if machine.deactivate is not None:
            machine.deactivate()
        return None
