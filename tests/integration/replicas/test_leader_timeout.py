"""A hung leader-lock connection cannot keep a dead leader (real PostgreSQL, through a TCP proxy on 127.0.0.1
that can freeze: connections stay open, no byte moves, as with a network that silently drops everything).

The leader's watchdog steps down within its lock timeout and its election thread is not left blocked; the server
ends the silent session at its idle_session_timeout, so another replica takes the lock; a frozen proxy at connect
time does not hang a round either.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from controller.scheduler.leader import LeaderElector
from controller.store.db import Store
from tests.fixtures.stores import PG_URL, drop_pg_schema, make_pg_schema, pg_schema_url

pytestmark = pytest.mark.postgres
LOCK_TIMEOUT_S = 1.0
INTERVAL_S = 0.3


class FreezableProxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL; ``freeze()`` stops moving bytes on every connection (old and new)
    while keeping them open."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.moving = threading.Event()
        self.moving.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            self.moving.wait()
            try:
                data = src.recv(65536)
                self.moving.wait()  # frozen after the read: hold the bytes, as a dead link would
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    def freeze(self) -> None:
        self.moving.clear()

    def close(self) -> None:
        self.moving.set()
        self.listener.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def schema() -> Iterator[str]:
    name = make_pg_schema()
    yield name
    drop_pg_schema(name)


@pytest.fixture
def proxy() -> Iterator[FreezableProxy]:
    url = urlsplit(PG_URL.replace("postgresql+psycopg", "postgresql"))
    p = FreezableProxy((url.hostname or "127.0.0.1", url.port or 5432))
    yield p
    p.close()


def proxied(schema: str, proxy: FreezableProxy) -> str:
    url = pg_schema_url(schema)
    return url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout} s")


def test_a_hung_lock_connection_steps_the_leader_down_and_frees_the_lock(schema: str, proxy) -> None:
    if "127.0.0.1:5432/" not in pg_schema_url(schema):
        pytest.skip("the proxy test needs PostgreSQL at 127.0.0.1:5432")
    events: list[str] = []
    a_store, b_store = Store(pg_schema_url(schema)), Store(pg_schema_url(schema))
    a = LeaderElector(  # only a's lock connection goes through the proxy (its heartbeat row is written directly)
        a_store,
        "a",
        on_loss=lambda: events.append("a lost"),
        interval_s=INTERVAL_S,
        lock_timeout_s=LOCK_TIMEOUT_S,
        lock_url=proxied(schema, proxy),
    )
    b = LeaderElector(b_store, "b", interval_s=INTERVAL_S, lock_timeout_s=LOCK_TIMEOUT_S)
    both: list[float] = []
    watching = threading.Event()

    def watch() -> None:  # samples the roles: never two leaders at once
        while not watching.wait(0.01):
            if a.is_leader and b.is_leader:
                both.append(time.monotonic())

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        assert a.start().is_leader
        assert not b.start().is_leader
        watcher.start()
        proxy.freeze()  # a's lock connection hangs: no error, no answer
        wait_until(lambda: not a.is_leader, INTERVAL_S + LOCK_TIMEOUT_S + 2, "a steps down")
        assert events == ["a lost"]
        # The server ends a's silent session (idle_session_timeout = 2 x the lock timeout) and b takes over.
        wait_until(lambda: b.is_leader, 2 * LOCK_TIMEOUT_S + INTERVAL_S + 4, "b takes the lock")
        assert not a.is_leader and both == []  # a stepped down before the server freed its lock
        # a's election thread is not stuck: its rounds go on (they time out on the frozen proxy, not leading).
        started = time.monotonic()
        assert a.step() is False
        assert time.monotonic() - started < LOCK_TIMEOUT_S + 2.5
    finally:
        watching.set()
        proxy.close()
        a.stop()
        b.stop()
        a_store.close()
        b_store.close()
