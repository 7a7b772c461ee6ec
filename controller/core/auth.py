"""Credentials: the admin token, enrollment tokens, and per-agent secrets. Only hashes are stored."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path

from sqlmodel import Session, select

from controller.store.db import Store
from controller.store.tables import Device, EnrollmentToken
from shared.errors import InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated

log = logging.getLogger(__name__)
TOKEN_PREFIX = "slmenr"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def load_or_create_secret(path: Path, make: Callable[[], str], what: str) -> str:
    """The secret kept in ``path``, created 0600 with ``make()`` on first start. Replicas sharing a data dir may
    start at once: the one that loses the race to create the file reads the winner's."""
    if path.exists():
        return path.read_text().strip()
    secret = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    log.info("created the %s in %s", what, path)
    return secret


def load_or_create_admin_token(path: Path, given: str = "") -> str:
    """The admin token: given explicitly, or kept in ``path`` (created 0600 on first start)."""
    if given:
        return given
    return load_or_create_secret(path, lambda: "slmadm_" + secrets.token_urlsafe(32), "admin token")


def check_admin(expected: str, presented: str) -> None:
    if not presented:
        raise Unauthenticated("missing admin token: pass --token or set SLMOPS_TOKEN (see <data-dir>/admin.token)")
    if not hmac.compare_digest(expected.encode(), presented.encode()):
        raise PermissionDenied("the admin token is not valid for this controller")


def create_enrollment_token(
    store: Store, ttl_s: int = 0, max_uses: int = 0, description: str = ""
) -> tuple[str, float]:
    if ttl_s < 0 or max_uses < 0:
        raise InvalidArgument("ttl_s and max_uses must be >= 0")
    token_id = uuid.uuid4().hex[:10]
    secret = secrets.token_urlsafe(24)
    now = time.time()
    expires = now + (ttl_s or 24 * 3600)
    with store.session() as s:
        s.add(
            EnrollmentToken(
                token_id=token_id,
                token_hash=digest(secret),
                created_at=now,
                expires_at=expires,
                max_uses=max_uses,
                description=description,
            )
        )
    return f"{TOKEN_PREFIX}.{token_id}.{secret}", expires


def use_enrollment_token(session: Session, token: str) -> None:
    """Checks an enrollment token and counts one use in ``session``; raises Unauthenticated with the reason.

    The use is committed with the caller's session, so an enrollment refused later (unknown profile, an id
    it may not take) does not spend it.
    """
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise Unauthenticated("malformed enrollment token: create one with `slmops tokens create`")
    _, token_id, secret = parts
    row = session.exec(select(EnrollmentToken).where(EnrollmentToken.token_id == token_id).with_for_update()).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest(secret)):
        raise Unauthenticated("enrollment token not recognised by this controller")
    if row.expires_at < time.time():
        raise Unauthenticated("enrollment token expired: create a new one with `slmops tokens create`")
    if row.max_uses and row.uses >= row.max_uses:
        raise Unauthenticated(f"enrollment token already used {row.uses} time(s) (max {row.max_uses})")
    row.uses += 1
    session.add(row)


class AgentAuthenticator:
    """Checks agent credentials; remembers verified pairs so a heartbeat costs no extra query."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._verified: dict[str, str] = {}

    def check(self, agent_id: str, secret: str) -> None:
        if not agent_id or not secret:
            raise Unauthenticated("missing agent credentials (x-slmops-agent-id, authorization): enroll first")
        hashed = digest(secret)
        if self._verified.get(agent_id) == hashed:
            return
        with self.store.session() as s:
            device = s.get(Device, agent_id)
        if device is None:
            raise Unauthenticated(f"unknown agent '{agent_id}': enroll again with an enrollment token")
        if not device.secret_hash:
            raise PermissionDenied(
                f"the credentials of agent '{agent_id}' were reset by an operator: enroll again with a fresh "
                "enrollment token (`slmops agent run --token ...`)"
            )
        if not hmac.compare_digest(device.secret_hash, hashed):
            raise PermissionDenied(f"wrong secret for agent '{agent_id}'")
        if len(self._verified) > 100_000:
            self._verified.clear()
        self._verified[agent_id] = hashed

    def forget(self, agent_id: str) -> None:
        self._verified.pop(agent_id, None)


class FailureLimiter:
    """Bounds failed attempts per peer host: ``limit`` failures within ``window_s`` lock the host out until the
    oldest of them is ``window_s`` old. Memory is bounded (``max_peers`` hosts are tracked; the stalest goes).
    """

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic, max_peers: int = 10_000
    ) -> None:
        if limit < 1 or window_s <= 0:
            raise InvalidArgument("the failure limit must be >= 1 and its window > 0 seconds")
        self.limit, self.window_s, self.clock, self.max_peers = limit, window_s, clock, max_peers
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, peer: str, now: float) -> deque[float]:
        times = self._failures.get(peer, deque())
        while times and now - times[0] >= self.window_s:
            times.popleft()
        return times

    def check(self, peer: str, what: str = "attempts") -> None:
        """Raises ResourceExhausted while ``peer`` is locked out."""
        now = self.clock()
        with self._lock:
            times = self._recent(peer, now)
            if len(times) < self.limit:
                return
            wait = self.window_s - (now - times[0])
        raise ResourceExhausted(
            f"too many failed {what} from {peer} ({len(times)} in {self.window_s:g}s): retry in {wait:.0f}s "
            "with a valid enrollment token (`slmops tokens create`)"
        )

    def failed(self, peer: str) -> None:
        now = self.clock()
        with self._lock:
            times = self._recent(peer, now)
            times.append(now)
            self._failures.pop(peer, None)
            self._failures[peer] = times  # most recent last: the stalest peer is first
            while len(self._failures) > self.max_peers:
                del self._failures[next(iter(self._failures))]


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string (``ipv4:1.2.3.4:5678``, ``ipv6:[::1]:5678``, ``unix:/path``)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer or "unknown"
