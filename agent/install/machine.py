"""The agent's install state machine: drives the handlers in ``steps.py`` through the transition table in
``states.py``, saving the state file before every handler runs, so an agent killed at any point resumes (or
rolls back) when it starts again.

Usage on the agent::

    machine = InstallMachine(data_dir, fetch, pinned_key_pem, activate, health_check, report)
    machine.resume()                         # at start, before serving: finish or undo an interrupted install
    if machine.start(manifest_json, signature, rollout_id, max_bytes_per_s, attempt=desired.attempt):
        machine.run_to_completion()          # on the agent's install thread
    machine.rollback_to_previous()           # when the controller rolls a rollout back

The serving layer loads ``machine.current_dir()`` at start; ``activate(dir)`` swaps the served model;
``health_check(dir, manifest) -> (ok, message)`` judges the newly active version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from agent.install import steps
from agent.install.admission import Admission
from agent.install.layout import Layout, check_file_path, check_ref, public_ref
from agent.install.statefile import InstallRecord, Snapshot, StateFile
from agent.install.states import (
    AFTER_ACTIVATION,
    DEFAULT_MAX_TRANSITIONS,
    DEFAULT_STATE_LIMITS,
    TERMINAL,
    Event,
    InstallProgress,
    ModelRef,
    State,
    Transition,
    next_state,
)
from agent.install.steps import ActivateFn, HealthCheckFn
from agent.install.transfer import FetchFn
from shared.errors import FailedPrecondition, SlmopsError
from shared.manifest import Manifest, verify
from shared.retry import INSTALL_STEP, TRANSFER, Policy

log = logging.getLogger(__name__)

ReportFn = Callable[[Transition], None]


class InstallMachine:
    """Installs one model version at a time into ``data_dir`` (layout in ``layout.py``).

    ``fetch(sha, offset, max_bps)`` streams a blob (``grpc_fetch``/``stub_fetch`` build one from a channel);
    ``report(Transition)`` sees every transition (wrap it in ``BufferedReporter`` so a controller that is away
    never blocks an install); ``progress(InstallProgress)`` sees bytes and files as they move. Not thread-safe
    apart from :meth:`abort`: drive it from one thread.
    """

    def __init__(
        self,
        data_dir: Path,
        fetch: FetchFn,
        verifier_key_pem: bytes,
        activate: ActivateFn,
        health_check: HealthCheckFn,
        report: ReportFn | None = None,
        *,
        deactivate: Callable[[], None] | None = None,
        progress: Callable[[InstallProgress], None] | None = None,
        keep_versions: int = 2,
        reserve_bytes: int = 64 << 20,
        retry: Policy | None = None,
        retry_backoff_s: float = 1.0,
        verify_retries: int = 1,
        state_limits: dict[State, int] | None = None,
        max_transitions: int = DEFAULT_MAX_TRANSITIONS,
    ) -> None:
        self.layout = Layout(data_dir)
        self.fetch = fetch
        self.key_pem = verifier_key_pem
        self.activate = activate
        self.health_check = health_check
        self.deactivate = deactivate
        self.report_fn = report
        self.progress_fn = progress
        self.keep_versions = max(1, keep_versions)
        self.reserve_bytes = reserve_bytes
        self.retry, self.step_retry = retry or TRANSFER, INSTALL_STEP.but(base_s=retry_backoff_s)
        self.verify_retries = verify_retries
        self.state_limits = {**DEFAULT_STATE_LIMITS, **(state_limits or {})}
        self.max_transitions = max_transitions
        self.cancel_event = threading.Event()
        self._abort_reason = "aborted"
        self._paused = False  # set by pause(): stop between steps, leave the saved state for resume()
        self._statefile = StateFile(self.layout.state_path)
        self.snapshot: Snapshot = self._statefile.load()
        self._manifest: Manifest | None = None
        # What was last said at INFO per kind of steady-state message (repeats go to DEBUG): one line per change.
        self.admission = Admission(self.layout)

    # --- queries -----------------------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self.snapshot.state

    @property
    def record(self) -> InstallRecord:
        if self.snapshot.record is None:
            raise FailedPrecondition("no install in progress")
        return self.snapshot.record

    @property
    def busy(self) -> bool:
        return self.state not in TERMINAL

    def current_version(self) -> tuple[str, str] | None:
        """The running (name, version) as the controller knows it (without a local ``+<profile>``)."""
        ref = self.layout.read_pointer("current")
        return (ref.name, public_ref(ref).version) if ref else None

    def previous_version(self) -> tuple[str, str] | None:
        ref = self.layout.read_pointer("previous")
        return (ref.name, public_ref(ref).version) if ref else None

    def current_dir(self) -> Path | None:
        return self.layout.current_dir()

    def manifest(self, check_signature: bool = True) -> Manifest:
        """The manifest of the install in progress, its signature checked against the pinned key."""
        rec = self.record
        if self._manifest is None or check_signature:
            if check_signature:
                self._manifest = verify(rec.manifest_json, rec.signature, self.key_pem)
            else:
                self._manifest = Manifest.from_json(rec.manifest_json)
        return self._manifest

    # --- commands ----------------------------------------------------------------------------------------
    def start(
        self,
        manifest_json: bytes,
        signature: bytes,
        rollout_id: str = "",
        max_bytes_per_s: int = 0,
        *,
        attempt: int = 0,
        force: bool = False,
    ) -> bool:
        """Accept a desired version. Returns True when an install was started (drive it with
        :meth:`run_to_completion`), False when there is nothing to do: already current, already being
        installed, or this very manifest already failed for this rollout and ``attempt`` (the controller's
        try of the rollout on this device; `slmops rollout resume` starts a new one) in a way a retry of the
        same attempt cannot fix (bad hashes, failed health check); ``force=True`` retries it anyway. A
        manifest whose signature does not verify is refused: IntegrityError, state FAILED."""
        try:
            manifest = verify(manifest_json, signature, self.key_pem)
            ref = check_ref(ModelRef(manifest.name, manifest.version))
            for f in manifest.files:
                check_file_path(f.path)
        except SlmopsError as exc:
            if self.busy:
                raise
            self._begin(InstallRecord(kind="install", name="?", version="?", rollout_id=rollout_id, retryable=False))
            self.record.error = f"desired manifest refused: {exc.message}"
            self._transition(Event.REJECTED, self.record.error)
            raise
        if self.busy:
            rec = self.record
            if rec.kind == "install" and public_ref(rec.ref) == ref and rec.manifest_json == manifest_json:
                return False
            raise FailedPrecondition(
                f"an install of {rec.ref} is in progress ({self.state}); abort() it before starting {ref}"
            )
        local = self.admission.local_ref(ref, manifest, rollout_id)
        if local is None:
            return False
        refused = None if force else self.admission.refusal(self.snapshot, local, manifest_json, rollout_id, attempt)
        if refused is not None:
            if refused.first:  # the controller sees the device failed instead of waiting for its timeout
                self._report(
                    Transition(
                        State.FAILED, State.FAILED, Event.REFUSED, refused.message, local, rollout_id, attempt=attempt
                    )
                )
            return False
        ref = local
        self.cancel_event.clear()
        prior = self.layout.read_pointer("current")
        self._begin(
            InstallRecord.install(ref, manifest_json, signature, rollout_id, attempt, max_bytes_per_s, prior=prior)
        )
        self._manifest = manifest
        self._transition(Event.START, f"installing {ref} ({manifest.total_size} bytes in {len(manifest.files)} files)")
        return True

    def rollback_to_previous(self) -> State:
        """Make the previous version current again (the controller rolled the rollout back); runs to the end."""
        if self.busy:
            raise FailedPrecondition(f"an install is in progress ({self.state}); abort() it first")
        prev = self.layout.read_pointer("previous")
        if prev is None or not self.layout.is_complete(prev):
            raise FailedPrecondition("this agent has no previous model version to roll back to")
        cur = self.layout.read_pointer("current")
        self.cancel_event.clear()
        self._begin(
            InstallRecord(
                kind="rollback",
                name=prev.name,
                version=prev.version,
                prior=[cur.name, cur.version] if cur else None,
                target=[prev.name, prev.version],
            )
        )
        self._transition(Event.ROLLBACK_REQUESTED, f"rolling back from {cur} to {prev}")
        return self.run_to_completion()

    def abort(self, reason: str = "aborted") -> None:
        """Ask the running install to stop (thread-safe): cleanup or rollback follows at the next step."""
        self._abort_reason = reason
        self.cancel_event.set()

    def pause(self) -> None:
        """Stop at the next step boundary and leave the saved state as it is (thread-safe; the agent is stopping).

        Unlike :meth:`abort` nothing is rolled back or reported as failed: the next agent start resumes where
        this one stopped, as after a crash. A download in progress keeps its partial files.
        """
        self._paused = True
        self.cancel_event.set()

    def resume(self) -> State:
        """Continue whatever the state file says (call at agent start); returns the final state."""
        self._paused = False
        self.cancel_event.clear()
        if self.busy:
            log.info("resuming install of %s in state %s", self.record.ref, self.state)
        return self.run_to_completion()

    def run_to_completion(self) -> State:
        """Run until a terminal state, or until :meth:`pause` (then the state is where it stopped)."""
        while self.busy and not self._paused:
            self.step()
        return self.state

    def step(self) -> State:
        """Run the current state's handler once and take the transition it leads to."""
        state = self.state
        if state in TERMINAL or self._paused:
            return state
        rec = self.record
        entries = rec.attempts.get(state, 0) + 1
        rec.attempts[state] = entries
        self.save()  # the entry count is on disk before the handler runs: a crash loop trips the guard
        limit = self.state_limits.get(state, 10)
        retried = state == State.DOWNLOAD and rec.last_event == Event.RETRY  # waits INSTALL_STEP's delay first
        if self.cancel_event.is_set() and state not in (State.CLEANUP, State.ROLLBACK):
            event, message = self._interrupted()
        elif entries > limit or rec.transitions >= self.max_transitions:
            event = Event.GUARD
            message = (
                f"state-loop guard: {state} entered {entries} times (limit {limit}), "
                f"{rec.transitions} transitions (limit {self.max_transitions})"
            )
            if rec.error:
                message += f"; last error: {rec.error}"
        elif retried and self.cancel_event.wait(self.step_retry.delay(entries - 1)):  # paused/aborted while waiting
            event, message = self._interrupted()
        else:
            event, message = self._run_handler(state)
        if event is None:  # paused: no transition; the next start runs this state again
            rec.attempts[state] = entries - 1  # a clean stop is not a crash: the loop guard does not count it
            self.save()
            log.info("%s: stopped in %s; it resumes there at the next start", rec.ref, state)
            return state
        if event in (Event.FAIL, Event.RETRY, Event.GUARD, Event.ABORT) and state not in (
            State.CLEANUP,
            State.ROLLBACK,
        ):
            rec.error = message
        self._transition(event, message)
        return self.state

    # --- internals ---------------------------------------------------------------------------------------
    def _interrupted(self) -> tuple[Event | None, str]:
        """What a set cancel event means: no event when :meth:`pause` set it, else ABORT with its reason."""
        return (None, "paused") if self._paused else (Event.ABORT, self._abort_reason)

    def _run_handler(self, state: State) -> tuple[Event | None, str]:
        """The handler's event and message; ``None`` when :meth:`pause` interrupted it."""
        try:
            return steps.outcome(state, steps.HANDLERS[state](self), self.record)
        except SlmopsError as exc:
            return steps.error_outcome(state, exc, self.record, paused=self._paused)
        except Exception as exc:  # a bug or an error from an injected callable: fail safe, with the cause
            log.exception("install step %s failed unexpectedly", state)
            if state in AFTER_ACTIVATION:
                self.record.retryable = False
            return Event.FAIL, f"{state} failed: {type(exc).__name__}: {exc}"

    def _begin(self, record: InstallRecord) -> None:
        self.snapshot.record = record
        self._manifest = None
        self.admission.forget()  # a new install is a change: the next steady state is said again

    def _transition(self, event: Event, message: str) -> None:
        rec = self.record
        src = self.state
        dst = next_state(src, event)
        if dst is None:  # not in the table: a bug; take the safe route for where we are
            log.error("no transition for (%s, %s): treating it as the guard", src, event)
            dst = next_state(src, Event.GUARD) or State.FAILED
        rec.transitions += 1
        rec.last_event = str(event)
        self.snapshot.state = dst
        if dst == State.FAILED and not message:
            message = rec.error
        if dst in TERMINAL:
            self.snapshot.message = message or f"{rec.ref}: {dst}"
        self.save()
        level = logging.WARNING if event in (Event.FAIL, Event.GUARD, Event.ABORT, Event.REJECTED) else logging.INFO
        log.log(level, "install %s: %s --%s--> %s %s", rec.ref, src, event, dst, message)
        model = rec.ref if rec.name != "?" else None
        self._report(Transition(src, dst, event, message, model, rec.rollout_id, attempt=rec.rollout_attempt))

    def _report(self, transition: Transition) -> None:
        if self.report_fn is not None:
            try:
                self.report_fn(transition)
            except Exception as exc:  # reporting must never break or block an install
                log.warning("reporting transition %s -> %s failed: %s", transition.from_state, transition.to_state, exc)

    def save(self) -> None:
        self._statefile.save(self.snapshot)

    def emit_progress(self, progress: InstallProgress) -> None:
        if self.progress_fn is not None:
            try:
                self.progress_fn(progress)
            except Exception as exc:
                log.debug("progress callback failed: %s", exc)

    # --- repairs (agent/install/integrity.py finds damaged installed files and calls this) -------------------
    def reinstall(
        self,
        ref: ModelRef,
        manifest_json: bytes,
        signature: bytes,
        reason: str,
        *,
        prior: ModelRef | None,
        rollout_id: str = "",
        rollout_attempt: int = 0,
        no_reuse: Iterable[str] = (),
        max_bytes_per_s: int = 0,
    ) -> State:
        """Install ``ref`` again (its installed files failed verification; ``reason`` says which, as the first
        transition's message) and run to the end. ``prior`` serves meanwhile and stays current if it fails.
        An unusable manifest is refused: REJECTED, state FAILED, nothing downloaded."""
        if self.busy:
            raise FailedPrecondition(f"an install of {self.record.ref} is in progress ({self.state}); repair after it")
        self.cancel_event.clear()
        record = InstallRecord.install(
            ref, manifest_json, signature, rollout_id, rollout_attempt, max_bytes_per_s, prior=prior
        )
        record.no_reuse = sorted(set(no_reuse))
        self._begin(record)
        try:
            self._manifest = verify(manifest_json, signature, self.key_pem)
        except SlmopsError as exc:
            self.record.error = f"{reason}; not installing it again: {exc.message}"
            self._transition(Event.REJECTED, self.record.error)
            return self.state
        self._transition(Event.START, reason)
        return self.run_to_completion()
