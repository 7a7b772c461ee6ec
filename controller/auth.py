"""Credentials: the admin token, enrollment tokens, and per-agent secrets. Only hashes are stored."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
import uuid
from pathlib import Path

from sqlmodel import select

from controller.store.db import Store
from controller.store.tables import Device, EnrollmentToken
from shared.errors import InvalidArgument, PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)
TOKEN_PREFIX = "slmenr"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def load_or_create_admin_token(path: Path, given: str = "") -> str:
    """The admin token: given explicitly, or kept in ``path`` (created 0600 on first start)."""
    if given:
        return given
    if path.exists():
        return path.read_text().strip()
    token = "slmadm_" + secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    log.info("created the admin token in %s", path)
    return token


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


def consume_enrollment_token(store: Store, token: str) -> None:
    """Checks an enrollment token and counts one use; raises Unauthenticated with the reason."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise Unauthenticated("malformed enrollment token: create one with `slmops tokens create`")
    _, token_id, secret = parts
    with store.session() as s:
        row = s.exec(select(EnrollmentToken).where(EnrollmentToken.token_id == token_id).with_for_update()).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest(secret)):
            raise Unauthenticated("enrollment token not recognised by this controller")
        if row.expires_at < time.time():
            raise Unauthenticated("enrollment token expired: create a new one with `slmops tokens create`")
        if row.max_uses and row.uses >= row.max_uses:
            raise Unauthenticated(f"enrollment token already used {row.uses} time(s) (max {row.max_uses})")
        row.uses += 1
        s.add(row)


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
        if not hmac.compare_digest(device.secret_hash, hashed):
            raise PermissionDenied(f"wrong secret for agent '{agent_id}'")
        if len(self._verified) > 100_000:
            self._verified.clear()
        self._verified[agent_id] = hashed

    def forget(self, agent_id: str) -> None:
        self._verified.pop(agent_id, None)
