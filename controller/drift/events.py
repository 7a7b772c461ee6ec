"""Drift events as domain objects, and the read helpers behind ``slmops drift list/show``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import col, select

from controller.store.db import Store
from controller.store.tables import DriftEventRow
from shared.errors import NotFound

KINDS = ("latency", "quality", "input")
# What the policy did with an event.
ACTIONS = ("retrain", "reoptimize", "none", "pending_approval", "cooldown", "failed")


class DriftEventNotFound(NotFound):
    def __init__(self, event_id: str) -> None:
        self.event_id = event_id
        super().__init__(f"no drift event '{event_id}' (see `slmops drift list` for the event ids)")


@dataclass
class DriftEvent:
    event_id: str
    profile: str
    model_name: str
    model_version: str
    kind: str
    detector: str
    metric: str
    statistic: float
    threshold: float
    detected_at: float
    action: str
    job_id: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: DriftEventRow) -> DriftEvent:
        try:
            evidence = json.loads(row.evidence_json or "{}")
        except ValueError:
            evidence = {"unparsed": row.evidence_json}
        return cls(
            event_id=row.event_id,
            profile=row.profile,
            model_name=row.model_name,
            model_version=row.model_version,
            kind=row.kind,
            detector=row.detector,
            metric=row.metric,
            statistic=row.statistic,
            threshold=row.threshold,
            detected_at=row.detected_at,
            action=row.action,
            job_id=row.job_id,
            evidence=evidence,
        )


def list_events(store: Store, profile: str | None = None, limit: int = 50) -> list[DriftEvent]:
    """Drift events, newest first, optionally for one profile."""
    with store.session() as s:
        query = select(DriftEventRow).order_by(col(DriftEventRow.detected_at).desc()).limit(max(1, limit))
        if profile:
            query = query.where(DriftEventRow.profile == profile)
        return [DriftEvent.from_row(r) for r in s.exec(query).all()]


def get_event(store: Store, event_id: str) -> DriftEvent:
    with store.session() as s:
        row = s.get(DriftEventRow, event_id)
    if row is None:
        raise DriftEventNotFound(event_id)
    return DriftEvent.from_row(row)
