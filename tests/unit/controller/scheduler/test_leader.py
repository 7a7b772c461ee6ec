"""Leader election: SQLite always leads; on PostgreSQL one replica holds the advisory lock, another takes over."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from controller.scheduler.leader import LeaderElector, list_replicas
from controller.store.db import Store, hold_sqlite_lock
from shared.errors import FailedPrecondition
from tests.fixtures.waiting import wait_for


def test_sqlite_replica_always_leads(sqlite_store: Store) -> None:
    events: list[str] = []
    elector = LeaderElector(
        sqlite_store,
        "only",
        "127.0.0.1:1",
        on_gain=lambda: events.append("gain"),
        on_loss=lambda: events.append("loss"),
        interval_s=0.05,
    ).start()
    assert elector.is_leader and events == ["gain"]
    [row] = list_replicas(sqlite_store)
    assert (row.replica_id, row.address, row.is_leader) == ("only", "127.0.0.1:1", True)
    first = row.last_seen
    assert wait_for(lambda: list_replicas(sqlite_store)[0].last_seen > first)  # heartbeats go on
    elector.stop()
    assert events == ["gain", "loss"]
    assert not list_replicas(sqlite_store)[0].is_leader


def test_one_postgres_leader_and_takeover_when_its_connection_dies(pg_url: str) -> None:
    stores = [Store(pg_url), Store(pg_url)]
    events: list[tuple[str, str]] = []
    electors = [
        LeaderElector(
            store,
            name,
            on_gain=lambda n=name: events.append((n, "gain")),
            on_loss=lambda n=name: events.append((n, "loss")),
            interval_s=0.1,
        )
        for store, name in zip(stores, ["a", "b"], strict=True)
    ]
    try:
        a, b = (e.start() for e in electors)
        assert a.is_leader and not b.is_leader
        time.sleep(0.3)
        assert a.is_leader and not b.is_leader and events == [("a", "gain")]
        rows = {r.replica_id: r for r in list_replicas(stores[0])}
        assert rows["a"].is_leader and not rows["b"].is_leader

        # The leader's session dies (a killed process looks the same to the server): b takes over, a stops.
        assert a._conn is not None
        backend = a._conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        admin = create_engine(pg_url)
        with admin.begin() as conn:
            held = conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = :p"),
                {"p": backend},
            ).scalar()
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend})
        admin.dispose()
        assert held == 1
        assert wait_for(lambda: b.is_leader and not a.is_leader, 5.0), events
        assert ("a", "loss") in events and ("b", "gain") in events
        assert wait_for(lambda: {r.replica_id for r in list_replicas(stores[0]) if r.is_leader} == {"b"})
        time.sleep(0.3)
        assert not a.is_leader  # a tries again but b holds the lock now

        b.stop()  # a clean stop releases the lock at once
        assert wait_for(lambda: a.is_leader, 5.0)
    finally:
        for elector in electors:
            elector.stop()
        for store in stores:
            store.close()


def test_sqlite_refuses_a_second_controller(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'controller.db'}"
    first = hold_sqlite_lock(url)
    assert first is not None
    try:
        with pytest.raises(FailedPrecondition) as err:
            hold_sqlite_lock(url)
        message = str(err.value)
        assert "already served by another controller" in message and "PostgreSQL" in message
        assert f"pid {os.getpid()}" in message
    finally:
        first.close()
    again = hold_sqlite_lock(url)  # released with the first holder
    assert again is not None
    again.close()
    assert hold_sqlite_lock("postgresql+psycopg://u@h/db") is None
