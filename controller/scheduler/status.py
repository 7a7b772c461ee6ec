"""What ``slmops controller status`` shows: the replicas on this database, the leader, their heartbeats."""

from __future__ import annotations

import time

from controller.scheduler.leader import list_replicas
from controller.store.db import Store
from shared.pb import admin_pb2

# A replica whose heartbeat is older than this is shown dead (heartbeats come every 3 s).
ALIVE_WITHIN_S = 15.0


def controller_status_pb(store: Store, answered_by: str) -> admin_pb2.ControllerStatusResponse:
    now = time.time()
    replicas = [
        admin_pb2.ControllerReplica(
            replica_id=r.replica_id,
            address=r.address,
            started_at=r.started_at,
            last_seen=r.last_seen,
            is_leader=r.is_leader,
            alive=now - r.last_seen <= ALIVE_WITHIN_S,
        )
        for r in list_replicas(store)
    ]
    leader = next((r.replica_id for r in replicas if r.is_leader and r.alive), "")
    database = "sqlite" if store.is_sqlite else "postgresql"
    return admin_pb2.ControllerStatusResponse(
        replicas=replicas, leader=leader, answered_by=answered_by, database=database
    )
