"""Two controller replicas on one PostgreSQL schema: one leads the periodic work, status and metrics show both,
the other takes over when the leader stops; SQLite refuses a second controller on its database."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.api.server import ControllerServer
from controller.core.metrics import FleetCollector
from shared.errors import FailedPrecondition
from shared.pb import admin_pb2
from tests.fixtures.controller import admin
from tests.fixtures.waiting import wait_for


def _metrics(server: ControllerServer) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in FleetCollector(server.app).collect()}


def _status(server: ControllerServer) -> admin_pb2.ControllerStatusResponse:
    return admin(server)("ControllerStatus", admin_pb2.ControllerStatusRequest())


def test_two_replicas_one_leader_and_takeover(controller_factory, pg_url: str, tmp_path: Path) -> None:
    a = controller_factory(tmp_path / "a", pg_url, replica_id="replica-a", insecure=True)
    b = controller_factory(tmp_path / "b", pg_url, replica_id="replica-b", insecure=True)
    assert a.app.scheduler.elector.is_leader and not b.app.scheduler.elector.is_leader
    assert wait_for(lambda: {r.replica_id for r in _status(b).replicas} == {"replica-a", "replica-b"}, 10)
    status = _status(b)
    assert (status.leader, status.answered_by, status.database) == ("replica-a", "replica-b", "postgresql")
    rows = {r.replica_id: r for r in status.replicas}
    assert rows["replica-a"].address == a.address and all(r.alive for r in status.replicas)
    assert _metrics(a)["slmops_leader"] == [({}, 1.0)] and _metrics(b)["slmops_leader"] == [({}, 0.0)]
    seen = {labels["replica"] for labels, _ in _metrics(b)["slmops_replica_last_seen_seconds"]}
    assert seen == {"replica-a", "replica-b"}

    started = time.monotonic()
    a.stop(grace=0)
    assert wait_for(lambda: b.app.scheduler.elector.is_leader, 15)
    assert time.monotonic() - started < 15
    assert wait_for(lambda: _status(b).leader == "replica-b", 10)
    assert _metrics(b)["slmops_leader"] == [({}, 1.0)]


def test_sqlite_refuses_a_second_controller_on_its_database(controller_factory, tmp_path: Path) -> None:
    first = controller_factory(tmp_path / "c", insecure=True)
    assert first.app.scheduler.elector.is_leader and _status(first).leader == first.settings.replica_id
    with pytest.raises(FailedPrecondition, match="already served by another controller") as err:
        controller_factory(tmp_path / "c", insecure=True)
    assert "PostgreSQL" in str(err.value)
    first.stop(grace=0)
    controller_factory(tmp_path / "c", insecure=True)  # the lock went with the first one
