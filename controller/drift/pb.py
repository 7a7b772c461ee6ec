"""Drift events to protobuf, for the admin API."""

from __future__ import annotations

import json

from controller.drift.events import DriftEvent
from shared.pb import admin_pb2, common_pb2


def event_to_pb(event: DriftEvent) -> admin_pb2.DriftEvent:
    return admin_pb2.DriftEvent(
        event_id=event.event_id,
        profile=event.profile,
        model=common_pb2.ModelRef(name=event.model_name, version=event.model_version),
        kind=event.kind,
        detector=event.detector,
        metric=event.metric,
        statistic=event.statistic,
        threshold=event.threshold,
        detected_unix=event.detected_at,
        action=event.action,
        job_id=event.job_id,
        evidence_json=json.dumps(event.evidence, sort_keys=True),
    )
