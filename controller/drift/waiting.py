"""Retrains that wait for new data: a detector that reacts within a few windows would otherwise start the retrain
before the devices have sampled the prompts that show the drift, and the new student would learn the old traffic.

With a profile's ``retrain_min_samples`` > 0, a quality or input drift whose policy decided to retrain is stored
with action ``waiting_for_samples`` (the cooldown and the daily count are booked at once, as for any action);
:func:`dispatch_waiting`, run by every drift check, starts its retrain once the devices have sampled that many
unused prompts of the model after the drift, or once ``retrain_max_wait_s`` has passed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from controller.drift.config import DriftConfig
from controller.drift.policy import Booking, Decision, DriftActions, dispatch
from controller.store.db import Store
from controller.store.tables import DriftEventRow, SampledPrompt

log = logging.getLogger(__name__)

WAITING = "waiting_for_samples"


def hold(row: DriftEventRow, decision: Decision, config: DriftConfig, since: float) -> bool:
    """Make a retrain event wait for ``config.retrain_min_samples`` prompts sampled after ``since``; whether it
    does (the caller then does not dispatch it)."""
    if decision.action != "retrain" or config.retrain_min_samples <= 0:
        return False
    evidence = json.loads(row.evidence_json or "{}")
    booking = decision.booking
    evidence["waiting"] = {
        "min_samples": config.retrain_min_samples,
        "since": since,
        "max_wait_s": config.retrain_max_wait_s,
        "booking": {"at": booking.at, "previous_cooldown": booking.previous_cooldown} if booking else None,
    }
    evidence.setdefault("policy", {})["reason"] = (
        f"retrain waits for {config.retrain_min_samples} prompts sampled after the drift (retrain_min_samples)"
    )
    row.action, row.evidence_json = WAITING, json.dumps(evidence, default=float)
    return True


def sampled_since(store: Store, model_name: str, since: float) -> int:
    with store.session() as s:
        query = (
            select(func.count())
            .select_from(SampledPrompt)
            .where(SampledPrompt.model_name == model_name, SampledPrompt.used_by_job == "")
            .where(col(SampledPrompt.ts) > since)
        )
        return int(s.exec(query).one())  # type: ignore[call-overload]


def dispatch_waiting(
    store: Store, actions: DriftActions, config_of: Callable[[str], DriftConfig | None], now: float
) -> list[DriftEventRow]:
    """Start the waiting retrains whose data has come (or whose wait is over); returns the events started."""
    with store.session() as s:
        waiting = list(s.exec(select(DriftEventRow).where(DriftEventRow.action == WAITING)).all())
    started = []
    for row in waiting:
        evidence: dict[str, Any] = json.loads(row.evidence_json or "{}")
        wait = evidence.get("waiting") or {}
        have = sampled_since(store, row.model_name, float(wait.get("since", row.detected_at)))
        config = config_of(row.profile)
        max_wait = float(wait.get("max_wait_s", config.retrain_max_wait_s if config else 0.0))
        if have < int(wait.get("min_samples", 0)) and now - row.detected_at < max_wait:
            continue
        wait["sampled"] = have
        evidence["waiting"] = wait
        row.action, row.evidence_json = "retrain", json.dumps(evidence, default=float)
        raw = wait.get("booking")
        booking = Booking(float(raw["at"]), str(raw["previous_cooldown"])) if raw else None
        log.info("drift event %s: %d prompts sampled since the drift; starting its retrain", row.event_id, have)
        started.append(dispatch(store, actions, row, booking))
    return started
