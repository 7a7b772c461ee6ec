"""What to do about a drift event, per profile.

- latency drift -> ``reoptimize`` (rebuild the profile's variant smaller or at a lower precision);
  quality or input drift -> ``retrain`` (distill again with the sampled prompts).
- ``drift_policy: auto`` calls the action at once; ``approve`` stores the event as ``pending_approval``
  until :func:`approve_event`; ``off`` only records the event (action ``none``).
- In ``auto`` mode, no second action for the same (profile, model name) within ``cooldown_s``, and at
  most ``max_retrains_per_day`` drift retrains per profile per UTC day; an event past either limit gets
  action ``cooldown``. Both live in KeyValue rows, so they survive controller restarts.
- If the action itself raises, the event keeps the error in its evidence and gets action ``failed``, and the
  cooldown and daily count it booked are given back: an action that started nothing must not hold off the
  next drift (e.g. a latency drift on a profile already at its lowest precision before a quality drift).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlmodel import Session

from controller.drift.config import DriftConfig
from controller.drift.events import DriftEvent, DriftEventNotFound
from controller.store.db import Store
from controller.store.kv import get_value, put_value
from controller.store.tables import DriftEventRow
from shared.errors import FailedPrecondition, SlmopsError

log = logging.getLogger(__name__)


class DriftActions(Protocol):
    """The seam to the factory and rollout: each call starts a job and returns its id."""

    def retrain(self, event: DriftEventRow) -> str: ...

    def reoptimize(self, event: DriftEventRow) -> str: ...


@dataclass(frozen=True)
class Booking:
    """The cooldown and daily count an action booked at ``at``, with the cooldown it replaced: an action that
    fails to start gives them back."""

    at: float
    previous_cooldown: str


@dataclass
class Decision:
    action: str
    reason: str
    booking: Booking | None = None


def action_for(kind: str) -> str:
    return "reoptimize" if kind == "latency" else "retrain"


def cooldown_key(profile: str, model_name: str) -> str:
    return f"drift.last_action/{profile}/{model_name}"


def retrain_count_key(profile: str, now: float) -> str:
    return f"drift.retrains/{profile}/{datetime.fromtimestamp(now, UTC):%Y-%m-%d}"


def retrains_today(session: Session, profile: str, now: float) -> int:
    return int(get_value(session, retrain_count_key(profile, now)) or 0)


def _record_action(session: Session, profile: str, model_name: str, action: str, now: float) -> Booking:
    booking = Booking(now, get_value(session, cooldown_key(profile, model_name)))
    put_value(session, cooldown_key(profile, model_name), repr(now))
    if action == "retrain":
        put_value(session, retrain_count_key(profile, now), str(retrains_today(session, profile, now) + 1))
    return booking


def _release_action(session: Session, profile: str, model_name: str, action: str, booking: Booking) -> None:
    """Undo :func:`_record_action` for an action that failed to start; the cooldown goes back to what it was
    unless another action has booked it since."""
    if get_value(session, cooldown_key(profile, model_name)) == repr(booking.at):
        put_value(session, cooldown_key(profile, model_name), booking.previous_cooldown)
    if action == "retrain":
        count = retrains_today(session, profile, booking.at)
        put_value(session, retrain_count_key(profile, booking.at), str(max(0, count - 1)))


def decide(
    session: Session, mode: str, config: DriftConfig, profile: str, model_name: str, kind: str, now: float
) -> Decision:
    """The action for a new event; in auto mode it also books the cooldown and the daily count, in the
    same transaction that stores the event."""
    wanted = action_for(kind)
    if mode == "off":
        return Decision("none", "drift policy is off for this profile")
    if mode == "approve":
        return Decision("pending_approval", f"{wanted} waits for approval (drift policy: approve)")
    last = get_value(session, cooldown_key(profile, model_name))
    if last and now - float(last) < config.cooldown_s:
        return Decision(
            "cooldown",
            f"last drift action for {profile}/{model_name} was {now - float(last):.0f} s ago "
            f"(cooldown_s {config.cooldown_s:.0f})",
        )
    if wanted == "retrain" and retrains_today(session, profile, now) >= config.max_retrains_per_day:
        return Decision("cooldown", f"{config.max_retrains_per_day} drift retrains already today for profile {profile}")
    booking = _record_action(session, profile, model_name, wanted, now)
    return Decision(wanted, "drift policy: auto", booking)


def dispatch(store: Store, actions: DriftActions, row: DriftEventRow, booking: Booking | None) -> DriftEventRow:
    """Call the action the event's ``action`` names and store the job id, or the failure (giving back the
    ``booking`` that :func:`decide` or :func:`approve_event` made for it)."""
    if row.action not in ("retrain", "reoptimize"):
        return row
    failed = ""
    try:
        job_id = actions.retrain(row) if row.action == "retrain" else actions.reoptimize(row)
    except SlmopsError as exc:  # refused for a reason the message names: no traceback needed
        log.warning("drift event %s: %s not started: %s", row.event_id, row.action, exc.message)
        failed = f"{row.action}: {type(exc).__name__}: {exc.message}"
    except Exception as exc:
        log.exception("drift event %s: %s failed", row.event_id, row.action)
        failed = f"{row.action}: {type(exc).__name__}: {exc}"
    else:
        row.job_id = str(job_id or "")
        log.info("drift event %s: %s started job %s", row.event_id, row.action, row.job_id)
    with store.session() as s:
        if failed:
            if booking is not None:
                _release_action(s, row.profile, row.model_name, row.action, booking)
            evidence = json.loads(row.evidence_json or "{}")
            evidence["action_error"] = failed
            row.action, row.evidence_json = "failed", json.dumps(evidence)
        stored = s.get(DriftEventRow, row.event_id)
        if stored is not None:
            stored.action, stored.job_id, stored.evidence_json = row.action, row.job_id, row.evidence_json
            s.add(stored)
    return row


def approve_event(store: Store, event_id: str, actions: DriftActions, now: float | None = None) -> DriftEvent:
    """Run the action of an event waiting for approval. A person decided, so the cooldown does not apply;
    the action still counts toward the cooldown and the daily retrain count."""
    now = time.time() if now is None else now
    with store.session() as s:
        row = s.get(DriftEventRow, event_id)
        if row is None:
            raise DriftEventNotFound(event_id)
        if row.action != "pending_approval":
            raise FailedPrecondition(f"drift event {event_id} is not waiting for approval (action: {row.action})")
        row.action = action_for(row.kind)
        booking = _record_action(s, row.profile, row.model_name, row.action, now)
        s.add(row)
    return DriftEvent.from_row(dispatch(store, actions, row, booking))
