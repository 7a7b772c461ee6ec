"""Short-lived artifact URL tokens: an HMAC-SHA256 over (device id, blob digest, expiry).

A token reads ``<agent_id>.<expiry unix seconds>.<hex mac>``; it is handed out over gRPC (GetArtifactUrls) to an
authenticated agent and presented on ``GET /v1/artifacts/<sha256>?t=<token>`` together with the agent's id
(header ``X-Slmops-Agent-Id``). The key is per controller: ``artifact_token_key`` (replicas share it) or
``<data_dir>/artifact_token.key`` created 0600 on first start. Checks compare in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from controller.core.auth import load_or_create_secret

log = logging.getLogger(__name__)
DEFAULT_TTL_S = 15 * 60
KEY_FILE = "artifact_token.key"


class TokenRejected(Exception):
    """The token does not grant this request; ``reason`` says why (sent to the client in the 403 body)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_or_create_key(data_dir: Path, given: str = "") -> bytes:
    """The HMAC key: ``given`` (a shared setting), else ``<data_dir>/artifact_token.key`` (created 0600)."""
    if given:
        return given.encode()
    made = load_or_create_secret(Path(data_dir) / KEY_FILE, lambda: secrets.token_urlsafe(32), "artifact URL token key")
    return made.encode()


class UrlTokens:
    """Mints and checks artifact URL tokens; ``clock`` is injectable for tests."""

    def __init__(self, key: bytes, ttl_s: int = DEFAULT_TTL_S, clock: Callable[[], float] = time.time) -> None:
        if not key:
            raise ValueError("the artifact token key must not be empty")
        self._key = key
        self.ttl_s = ttl_s
        self.clock = clock

    def _mac(self, agent_id: str, sha256: str, expires: int) -> str:
        message = f"{agent_id}\n{sha256.lower()}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def mint(self, agent_id: str, sha256: str, ttl_s: int | None = None) -> tuple[str, int]:
        """A token for ``agent_id`` to read blob ``sha256`` and its expiry (unix seconds)."""
        if not agent_id or "." in agent_id:
            raise ValueError(f"cannot mint a token for agent id {agent_id!r}")
        expires = int(self.clock()) + int(self.ttl_s if ttl_s is None else ttl_s)
        return f"{agent_id}.{expires}.{self._mac(agent_id, sha256, expires)}", expires

    def check(self, token: str, agent_id: str, sha256: str) -> None:
        """Raises TokenRejected unless ``token`` grants ``agent_id`` blob ``sha256`` now."""
        if not token:
            raise TokenRejected("missing token: ask the controller for a URL (GetArtifactUrls)")
        owner, _, rest = token.partition(".")
        expiry_text, _, mac = rest.partition(".")
        if not (owner and expiry_text.isdigit() and len(mac) == 64):
            raise TokenRejected("malformed token")
        if not agent_id:
            raise TokenRejected("missing agent id (header X-Slmops-Agent-Id)")
        if not hmac.compare_digest(owner.encode(), agent_id.encode()):
            raise TokenRejected("token was issued to another device")
        expected = self._mac(owner, sha256, int(expiry_text))
        if not hmac.compare_digest(expected.encode(), mac.encode()):
            raise TokenRejected("token is not valid for this blob")
        if int(expiry_text) < self.clock():
            raise TokenRejected("token expired: ask the controller for a new URL")
