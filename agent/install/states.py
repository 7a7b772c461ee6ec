"""States, events and the one transition table of the agent's install state machine.

Happy path: IDLE -> DOWNLOAD -> VERIFY -> INSTALL -> ACTIVATE -> HEALTH_CHECK -> COMMIT -> DONE.
A failure before the new version is activated goes to CLEANUP (the old model never stopped serving); a failure
from ACTIVATE on goes to ROLLBACK (the previous version is made current and activated again). Both end in
FAILED. The names mirror ``common.proto``'s ``InstallState`` (``INSTALL_STATE_<NAME>``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum


class State(StrEnum):
    IDLE = "IDLE"
    DOWNLOAD = "DOWNLOAD"
    VERIFY = "VERIFY"
    INSTALL = "INSTALL"
    ACTIVATE = "ACTIVATE"
    HEALTH_CHECK = "HEALTH_CHECK"
    COMMIT = "COMMIT"
    ROLLBACK = "ROLLBACK"
    CLEANUP = "CLEANUP"
    FAILED = "FAILED"
    DONE = "DONE"


class Event(StrEnum):
    START = "START"  # a new desired manifest was accepted
    REJECTED = "REJECTED"  # a desired manifest was refused before anything started (bad signature, ...)
    OK = "OK"
    FAIL = "FAIL"
    RETRY = "RETRY"  # transient failure: run the state again (after a backoff)
    GUARD = "GUARD"  # the state-loop guard tripped (too many entries into a state / transitions)
    ABORT = "ABORT"  # the install was cancelled (e.g. the rollout was aborted or superseded)
    REVERTED = "REVERTED"  # a failed install's previous version is active again
    RESTORED = "RESTORED"  # a rollback the controller asked for is done
    ROLLBACK_REQUESTED = "ROLLBACK_REQUESTED"
    # Reported, not taken: the desired version already failed for this rollout and attempt (FAILED -> FAILED).
    REFUSED = "REFUSED"


TERMINAL = frozenset({State.IDLE, State.DONE, State.FAILED})
# States where the new version is not active yet: a failure only needs cleaning up.
BEFORE_ACTIVATION = frozenset({State.DOWNLOAD, State.VERIFY, State.INSTALL})
# States where the new version may be active: a failure must restore the previous one.
AFTER_ACTIVATION = frozenset({State.ACTIVATE, State.HEALTH_CHECK, State.COMMIT})


def _table() -> dict[tuple[State, Event], State]:
    t: dict[tuple[State, Event], State] = {}
    for s in TERMINAL:
        t[(s, Event.START)] = State.DOWNLOAD
        t[(s, Event.REJECTED)] = State.FAILED
        t[(s, Event.ROLLBACK_REQUESTED)] = State.ROLLBACK
    t.update(
        {
            (State.DOWNLOAD, Event.OK): State.VERIFY,
            (State.DOWNLOAD, Event.RETRY): State.DOWNLOAD,
            (State.DOWNLOAD, Event.FAIL): State.CLEANUP,
            (State.VERIFY, Event.OK): State.INSTALL,
            (State.VERIFY, Event.RETRY): State.DOWNLOAD,  # a file failed its hash: fetch it again
            (State.VERIFY, Event.FAIL): State.CLEANUP,
            (State.INSTALL, Event.OK): State.ACTIVATE,
            (State.INSTALL, Event.FAIL): State.CLEANUP,
            (State.ACTIVATE, Event.OK): State.HEALTH_CHECK,
            (State.ACTIVATE, Event.FAIL): State.ROLLBACK,
            (State.HEALTH_CHECK, Event.OK): State.COMMIT,
            (State.HEALTH_CHECK, Event.FAIL): State.ROLLBACK,
            (State.COMMIT, Event.OK): State.DONE,
            (State.COMMIT, Event.FAIL): State.ROLLBACK,
            (State.ROLLBACK, Event.REVERTED): State.FAILED,
            (State.ROLLBACK, Event.RESTORED): State.IDLE,
            # Rollback and cleanup are retried (a transient error must not leave the old model off);
            # the state-loop guard ends a retry loop in FAILED.
            (State.ROLLBACK, Event.FAIL): State.ROLLBACK,
            (State.CLEANUP, Event.OK): State.FAILED,
            (State.CLEANUP, Event.FAIL): State.CLEANUP,
        }
    )
    for s in BEFORE_ACTIVATION:
        t[(s, Event.GUARD)] = State.CLEANUP
        t[(s, Event.ABORT)] = State.CLEANUP
    for s in AFTER_ACTIVATION:
        t[(s, Event.GUARD)] = State.ROLLBACK
        t[(s, Event.ABORT)] = State.ROLLBACK
    for s in (State.ROLLBACK, State.CLEANUP):
        t[(s, Event.GUARD)] = State.FAILED
    return t


TRANSITIONS: dict[tuple[State, Event], State] = _table()

# How often a state may be entered in one install (retries and resumes after a crash both count).
DEFAULT_STATE_LIMITS: dict[State, int] = {
    State.DOWNLOAD: 12,
    State.VERIFY: 5,
    State.INSTALL: 5,
    State.ACTIVATE: 3,
    State.HEALTH_CHECK: 3,
    State.COMMIT: 5,
    State.ROLLBACK: 3,
    State.CLEANUP: 3,
}
DEFAULT_MAX_TRANSITIONS = 40


def next_state(state: State, event: Event) -> State | None:
    return TRANSITIONS.get((state, event))


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class Transition:
    """One transition, as handed to the ``report`` callback (and sent as an InstallReport)."""

    from_state: State
    to_state: State
    event: Event
    message: str
    model: ModelRef | None
    rollout_id: str = ""
    timestamp: float = field(default_factory=time.time)
    attempt: int = 0  # the rollout attempt (DesiredModel.attempt) this transition belongs to


@dataclass(frozen=True)
class InstallProgress:
    """Progress inside a long state (bytes downloaded, files verified or linked)."""

    state: State
    item: str
    done: int
    total: int
    rate_bps: float = 0.0
