"""Exactly-once ingest of agents' telemetry batches.

A batch is stored with its windows (and sampled prompts) in one transaction whose first statement inserts
the ``TelemetryBatchRow`` keyed by (agent_id, seq). A resend of a stored batch (lost ack, agent restart,
controller restart) fails that insert on the primary key: the transaction rolls back and the batch is
acknowledged as a duplicate. Two concurrent copies of the same batch race on the same key: the database
lets exactly one commit (PostgreSQL blocks the second insert until the first commits, then raises a
unique violation; SQLite serializes writers), so a batch is never counted twice.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from controller.store.db import Store
from controller.store.tables import Device, SampledPrompt, TelemetryBatchRow, TelemetryWindowRow
from controller.telemetry.extras import save_answers, save_signals
from shared.errors import PermissionDenied
from shared.telemetry import TelemetryBatchData, TelemetryWindowData, batch_from_pb

log = logging.getLogger(__name__)

# Window fields stored as they are (the others: keys, profile fallback, JSON-encoded histogram).
_WINDOW_COLUMNS = tuple(
    name
    for name in TelemetryWindowRow.model_fields
    if name in TelemetryWindowData.__dataclass_fields__ and name != "profile"
)

# Built once so SQLAlchemy compiles them once (cached): ingest runs for every batch of every agent.
_INSERT_BATCH = insert(TelemetryBatchRow.__table__)  # type: ignore[attr-defined]
_INSERT_WINDOW = insert(TelemetryWindowRow.__table__)  # type: ignore[attr-defined]
_INSERT_PROMPT = insert(SampledPrompt.__table__)  # type: ignore[attr-defined]
# With drift signals / sampled answers the new ids key their KeyValue rows (controller/telemetry/extras.py).
_INSERT_WINDOW_IDS = _INSERT_WINDOW.returning(TelemetryWindowRow.__table__.c.id, sort_by_parameter_order=True)  # type: ignore[attr-defined]
_INSERT_PROMPT_IDS = _INSERT_PROMPT.returning(SampledPrompt.__table__.c.id, sort_by_parameter_order=True)  # type: ignore[attr-defined]
_TOUCH_DEVICE = (
    update(Device.__table__)  # type: ignore[attr-defined]
    .where(Device.__table__.c.agent_id == bindparam("a"))  # type: ignore[attr-defined]
    .where(Device.__table__.c.last_seen < bindparam("now"))  # type: ignore[attr-defined]
    .values(last_seen=bindparam("now"))
)
_MAX_SEQ = select(func.max(TelemetryBatchRow.seq)).where(TelemetryBatchRow.agent_id == bindparam("a"))


def _device_profile(session: Session, agent_id: str) -> str:
    value = session.execute(select(Device.profile).where(Device.agent_id == agent_id)).scalar()
    return str(value or "")


def _max_seq(session: Session, agent_id: str) -> int:
    return int(session.connection().execute(_MAX_SEQ, {"a": agent_id}).scalar() or 0)


def window_values(agent_id: str, seq: int, w: TelemetryWindowData, profile: str) -> dict[str, Any]:
    """The ``TelemetryWindowRow`` columns of one window."""
    values = {name: getattr(w, name) for name in _WINDOW_COLUMNS}
    values.update(
        agent_id=agent_id,
        seq=seq,
        profile=profile,
        prompt_len_hist_json=json.dumps(w.prompt_len_hist),
        prompt_len_edges_json=json.dumps(w.prompt_len_edges),
    )
    return values


def _insert(conn: Any, plain: Any, with_ids: Any, rows: list[dict[str, Any]], extras: list[Any], save: Any) -> None:
    """Insert ``rows``; when any has an extra (signals, an answer), with their new ids, and save the extras."""
    if not rows:
        return
    if not any(extras):
        conn.execute(plain, rows)
        return
    ids = [int(r[0]) for r in conn.execute(with_ids, rows)]
    save(conn, ids, extras)


def _to_domain(agent_id: str, batch: Any) -> TelemetryBatchData:
    # A message is validated field by field on conversion; a domain batch is validated below.
    from_message = not isinstance(batch, TelemetryBatchData)
    data = batch_from_pb(batch) if from_message else batch
    if data.agent_id and data.agent_id != agent_id:
        raise PermissionDenied(
            f"telemetry batch names agent '{data.agent_id}' but the caller is '{agent_id}'; "
            "an agent may only report its own telemetry"
        )
    data = TelemetryBatchData(
        agent_id=agent_id, seq=data.seq, windows=data.windows, dropped_windows=data.dropped_windows
    )
    return data.validate(windows=not from_message)


def ingest_batch(store: Store, agent_id: str, batch: Any, now: float | None = None) -> tuple[int, bool]:
    """Store ``batch`` (a ``TelemetryBatch`` message or :class:`TelemetryBatchData`) exactly once.

    ``agent_id`` is the authenticated caller. Returns ``(acked_seq, duplicate)``: the highest sequence
    number stored for the agent, and whether this batch had been stored before. Malformed batches raise
    ``InvalidArgument`` naming the field; a batch for another agent raises ``PermissionDenied``.
    """
    data = _to_domain(agent_id, batch)
    now = time.time() if now is None else now
    try:
        with store.session() as s:
            conn = s.connection()  # Core statements: this is the controller's hottest write path
            # First statement: the primary key claim. A duplicate fails here, before anything else is written.
            conn.execute(
                _INSERT_BATCH,
                {
                    "agent_id": agent_id,
                    "seq": data.seq,
                    "received_at": now,
                    "window_count": len(data.windows),
                    "dropped_windows": data.dropped_windows,
                },
            )
            conn.execute(_TOUCH_DEVICE, {"a": agent_id, "now": now})
            fallback = _device_profile(s, agent_id) if any(not w.profile for w in data.windows) else ""
            rows, prompts, answers = [], [], []
            for w in data.windows:
                profile = w.profile or fallback
                rows.append(window_values(agent_id, data.seq, w, profile))
                prompts += [
                    {
                        "agent_id": agent_id,
                        "profile": profile,
                        "model_name": w.model_name,
                        "model_version": w.model_version,
                        "prompt": prompt,
                        "ts": w.end_unix,
                        "used_by_job": "",
                    }
                    for prompt in w.sampled_prompts
                ]
                answers += w.sampled_answers or [""] * len(w.sampled_prompts)
            _insert(conn, _INSERT_WINDOW, _INSERT_WINDOW_IDS, rows, [w.signals for w in data.windows], save_signals)
            _insert(conn, _INSERT_PROMPT, _INSERT_PROMPT_IDS, prompts, answers, save_answers)
            acked = _max_seq(s, agent_id)
    except IntegrityError:
        with store.session() as s:
            if s.get(TelemetryBatchRow, (agent_id, data.seq)) is None:
                raise  # not our primary key: a real integrity problem
            acked = _max_seq(s, agent_id)
        log.debug("telemetry batch %s/%d is a duplicate; acknowledged, not stored again", agent_id, data.seq)
        return acked, True
    if data.dropped_windows:
        log.warning(
            "agent %s reports %d telemetry windows dropped by its full offline buffer", agent_id, data.dropped_windows
        )
    return acked, False


def report_telemetry(store: Store, agent_id: str, request: Any) -> Any:
    """``AgentService.ReportTelemetry`` body: ingest and build the ``TelemetryAck``."""
    from shared.pb import agent_pb2

    acked, duplicate = ingest_batch(store, agent_id, request)
    return agent_pb2.TelemetryAck(acked_seq=acked, duplicate=duplicate)
