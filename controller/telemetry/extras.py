"""What a telemetry window carries beyond its columns: the drift signals (``shared/signals.py``) per window, and
the device's answer to each sampled prompt (for the teacher audit, ``controller/loop/audit.py``).

Both are stored as ``KeyValue`` rows written in the ingest's transaction (so they are exactly-once with their
window): ``telemetry.signals/<window id>`` -> JSON ``{signal: {"counts", "sum", "sum_sq"}}`` and
``audit.answer/<sampled prompt id>`` -> the answer text. The audit deletes an answer row once it has used it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, insert
from sqlalchemy.engine import Connection
from sqlmodel import Session, col

from controller.store.kv import get_values
from controller.store.tables import KeyValue
from shared.signals import SignalSummary

SIGNALS_PREFIX = "telemetry.signals/"
ANSWER_PREFIX = "audit.answer/"
_INSERT_KV = insert(KeyValue.__table__)  # type: ignore[attr-defined]


def signals_key(window_id: int) -> str:
    return f"{SIGNALS_PREFIX}{window_id}"


def answer_key(prompt_id: int) -> str:
    return f"{ANSWER_PREFIX}{prompt_id}"


def save_signals(conn: Connection, window_ids: Sequence[int], signals: Sequence[dict[str, Any]]) -> None:
    rows = [
        {"key": signals_key(wid), "value": json.dumps(sig, sort_keys=True)}
        for wid, sig in zip(window_ids, signals, strict=True)
        if sig
    ]
    if rows:
        conn.execute(_INSERT_KV, rows)


def save_answers(conn: Connection, prompt_ids: Sequence[int], answers: Sequence[str]) -> None:
    rows = [{"key": answer_key(pid), "value": a} for pid, a in zip(prompt_ids, answers, strict=True) if a]
    if rows:
        conn.execute(_INSERT_KV, rows)


def load_signals(session: Session, window_ids: Iterable[int]) -> dict[int, dict[str, SignalSummary]]:
    """Window id -> its signal summaries (windows without signals are left out)."""
    out: dict[int, dict[str, SignalSummary]] = {}
    for key, value in get_values(session, [signals_key(i) for i in window_ids]).items():
        raw = json.loads(value or "{}")
        out[int(key.removeprefix(SIGNALS_PREFIX))] = {n: SignalSummary.from_dict(n, v) for n, v in raw.items()}
    return out


def load_answers(session: Session, prompt_ids: Iterable[int]) -> dict[int, str]:
    found = get_values(session, [answer_key(i) for i in prompt_ids])
    return {int(key.removeprefix(ANSWER_PREFIX)): value for key, value in found.items()}


def forget_answers(session: Session, prompt_ids: Iterable[int]) -> None:
    keys = [answer_key(i) for i in prompt_ids]
    if keys:
        session.execute(delete(KeyValue).where(col(KeyValue.key).in_(keys)))
