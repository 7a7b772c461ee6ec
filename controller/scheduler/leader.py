"""Leader election among controller replicas, and each replica's heartbeat row.

Several ``slmops controller serve`` processes may share one PostgreSQL database; they all serve RPCs, but the
periodic work (rollout ticker, drift monitor, job promotion) runs on one of them only: the **leader**, the replica
whose dedicated database connection holds a session advisory lock (``pg_try_advisory_lock`` on a key hashed from
``LEADER_LOCK_NAME`` and the schema, so deployments in different schemas of one database elect apart).
The lock dies with that connection (process killed, network gone), so another replica's next try, every
``interval_s`` seconds (3 s by default), takes it over. A leader checks its lock connection on each round and
stops leading at once when the connection fails.

A hung lock connection cannot keep a dead leader. Each check runs under a watchdog: when it has not answered
within ``lock_timeout_s`` the replica stops leading at once (``on_loss``) and shuts the connection's socket down,
so the blocked call returns. The connection itself has a connect timeout, TCP keepalives and a TCP user timeout
(libpq), a ``statement_timeout``, and an ``idle_session_timeout`` of twice the watchdog's limit: when the leader
stops talking to the server (process frozen, network gone), the server ends the session and frees the lock
after that long, while the leader has already stepped down, so the two never overlap.

Every replica upserts its ``controllerreplica`` row (address, started_at, last_seen, is_leader) each round; the
new leader clears ``is_leader`` on the others. On SQLite there is a single process (``controller.lock`` refuses
a second, see controller/store/db.py), which is always the leader.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

from sqlalchemy import create_engine, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool
from sqlmodel import col, select

from controller.store.db import Store
from controller.store.tables import ControllerReplica

log = logging.getLogger(__name__)

# The PostgreSQL session advisory lock the leader holds: a 64-bit hash of this name and the current schema.
LEADER_LOCK_NAME = "slmops-leader"
_TRY_LOCK = text("SELECT pg_try_advisory_lock(hashtextextended(:name || ':' || current_schema(), 0))")
Callback = Callable[[], object]


class LeaderElector:
    """Runs the election loop in a thread; calls ``on_gain`` / ``on_loss`` when this replica's role changes."""

    def __init__(
        self,
        store: Store,
        replica_id: str,
        address: str = "",
        *,
        on_gain: Callback | None = None,
        on_loss: Callback | None = None,
        interval_s: float = 3.0,
        lock_name: str = LEADER_LOCK_NAME,
        lock_timeout_s: float = 5.0,
        lock_url: str = "",
    ) -> None:
        self.store = store
        self.replica_id = replica_id
        self.address = address
        self.interval_s = interval_s
        self.lock_name = lock_name
        self.lock_timeout_s = lock_timeout_s
        # The lock connection's database URL when it differs from the store's (a session-pooling path that
        # bypasses a transaction-pooling PgBouncer, whose connections cannot hold session advisory locks).
        self.lock_url = lock_url
        self._engine: Engine | None = None
        self._gave_up = False  # set by the watchdog when a lock check did not answer in time
        self._on_gain = on_gain
        self._on_loss = on_loss
        self._conn: Connection | None = None
        self._leader = False
        self._started_at = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def is_leader(self) -> bool:
        return self._leader

    def start(self) -> LeaderElector:
        """One round now (so a lone replica leads before ``start`` returns), then a round every ``interval_s``."""
        self.step()
        self._thread = threading.Thread(target=self._loop, name="leader-election", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop, give up leadership (``on_loss``), release the lock and mark this replica not leading."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        with self._lock:
            self._set_role(False)
            self._close_conn()
            if self._engine is not None:
                self._engine.dispose()
            try:
                self._heartbeat()
            except Exception:
                log.debug("could not write the last heartbeat of replica %s", self.replica_id, exc_info=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.step()

    def step(self) -> bool:
        """One round: check or try the lock, then write the heartbeat; returns whether this replica leads."""
        with self._lock:
            if self._stop.is_set() and self._thread is not None:
                return self._leader
            self._set_role(self._holds_lock())
            try:
                self._heartbeat()
            except Exception:
                log.warning("replica %s could not write its heartbeat", self.replica_id, exc_info=True)
            return self._leader

    # --- the lock -----------------------------------------------------------------------------------------

    def _holds_lock(self) -> bool:
        if self.store.is_sqlite:
            return True
        answered = threading.Event()
        timer = threading.Timer(self.lock_timeout_s, self._hung, args=(answered,))
        timer.daemon = True
        timer.start()
        try:
            held = self._check_lock()
        finally:
            answered.set()
            timer.cancel()
        if self._gave_up:  # the watchdog stepped down meanwhile: a late answer is not trusted, start afresh
            self._gave_up = False
            self._close_conn()
            return False
        return held

    def _hung(self, answered: threading.Event) -> None:
        """Watchdog: the lock check has not answered in ``lock_timeout_s``: stop leading now, then unblock it."""
        if answered.is_set():
            return
        log.warning(
            "replica %s: the leader lock connection has not answered in %.1f s; not leading",
            self.replica_id,
            self.lock_timeout_s,
        )
        self._gave_up = True
        self._set_role(False)
        conn = self._conn
        if conn is not None:
            _shutdown_socket(conn)  # the election thread's call fails now; it closes the connection

    def _lock_engine(self) -> Engine:
        """An engine for the lock connection only: timeouts everywhere, no pool (one connection, made anew)."""
        if self._engine is None:
            timeout_ms = int(self.lock_timeout_s * 1000)
            self._engine = create_engine(
                self.lock_url or self.store.engine.url,
                poolclass=NullPool,
                connect_args={
                    "connect_timeout": max(2, int(self.lock_timeout_s)),  # libpq's minimum is 2 s
                    "keepalives": 1,
                    "keepalives_idle": max(1, int(self.lock_timeout_s)),
                    "keepalives_interval": 1,
                    "keepalives_count": 3,
                    "tcp_user_timeout": timeout_ms,
                },
            )
        return self._engine

    def _configure(self, conn: Connection) -> None:
        timeout_ms = int(self.lock_timeout_s * 1000)
        idle_ms = int(max(2 * self.lock_timeout_s, 3 * self.interval_s) * 1000)
        conn.execute(text(f"SET statement_timeout = {timeout_ms}"))
        try:  # PostgreSQL 14+: the server ends the session (and frees the lock) of a leader gone silent
            conn.execute(text(f"SET idle_session_timeout = {idle_ms}"))
        except Exception as exc:
            log.warning("leader lock: no idle_session_timeout on this server (%s): PostgreSQL 14+ recommended", exc)

    def _check_lock(self) -> bool:
        try:
            if self._conn is None:  # kept before it is configured: the watchdog can unblock every call on it
                self._conn = self._lock_engine().connect().execution_options(isolation_level="AUTOCOMMIT")
                self._configure(self._conn)
            if self._leader:
                self._conn.execute(text("SELECT 1"))  # the session (and its lock) is still there
                return True
            got = self._conn.execute(_TRY_LOCK, {"name": self.lock_name}).scalar()
            return bool(got)
        except Exception as exc:
            log.warning("replica %s: leader lock connection failed (%s); not leading", self.replica_id, exc)
            self._close_conn()
            return False

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.invalidated:
            conn.close()
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock_all()"))
        except Exception:
            conn.invalidate()  # a broken session: drop it (the server frees its locks)
        try:
            conn.close()
        except Exception:
            log.debug("closing the leader lock connection failed", exc_info=True)

    def _set_role(self, leader: bool) -> None:
        if leader == self._leader:
            return
        self._leader = leader
        log.warning("replica %s %s", self.replica_id, "is now the leader" if leader else "stopped leading")
        callback = self._on_gain if leader else self._on_loss
        if callback is None:
            return
        try:
            callback()
        except Exception:
            log.exception("leader %s callback failed", "gain" if leader else "loss")

    # --- the heartbeat ------------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        now = time.time()
        with self.store.session() as s:
            row = s.get(ControllerReplica, self.replica_id)
            if row is None:
                row = ControllerReplica(replica_id=self.replica_id, started_at=self._started_at)
            row.address, row.last_seen, row.is_leader = self.address, now, self._leader
            s.add(row)
            if self._leader:
                s.exec(
                    update(ControllerReplica)
                    .where(col(ControllerReplica.replica_id) != self.replica_id)
                    .values(is_leader=False)
                )


def _shutdown_socket(conn: Connection) -> None:
    """Unblock a call waiting on ``conn``'s socket from another thread: it then fails, and its thread drops the
    connection (libpq's handle is only touched by that thread). The server frees the session's locks when it sees
    the socket shut (or at its idle_session_timeout when the network is gone)."""
    with contextlib.suppress(Exception):
        fd = conn.connection.dbapi_connection.pgconn.socket  # type: ignore[union-attr]
        sock = socket.socket(fileno=fd)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.detach()  # the fd stays libpq's: no double close


def list_replicas(store: Store) -> list[ControllerReplica]:
    """Every replica that has run on this database, most recently seen first."""
    with store.session() as s:
        return list(s.exec(select(ControllerReplica).order_by(col(ControllerReplica.last_seen).desc())).all())
