"""The ``keyvalue`` table's small values (counters, cursors, cooldowns) read and written in a session."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from controller.store.tables import KeyValue


def get_value(session: Session, key: str, default: str = "") -> str:
    """The value stored under ``key``; ``default`` when there is none (or it is empty)."""
    row = session.get(KeyValue, key)
    return row.value if row is not None and row.value else default


def put_value(session: Session, key: str, value: str) -> None:
    """Store ``value`` under ``key`` (committed with the session)."""
    row = session.get(KeyValue, key) or KeyValue(key=key)
    row.value = value
    session.add(row)


def get_values(session: Session, keys: Sequence[str], chunk: int = 500) -> dict[str, str]:
    """The values stored under ``keys`` (missing ones left out), read ``chunk`` keys per query."""
    out: dict[str, str] = {}
    for start in range(0, len(keys), chunk):
        rows = session.exec(select(KeyValue).where(col(KeyValue.key).in_(keys[start : start + chunk]))).all()
        out.update({row.key: row.value for row in rows})
    return out
