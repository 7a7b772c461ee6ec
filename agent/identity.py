"""The agent's persisted identity: id, secret, pinned CA and manifest key. A restart keeps the same id."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.errors import ConfigError


@dataclass
class Identity:
    agent_id: str
    agent_secret: str
    controller: str
    profile: str
    manifest_public_key_pem: str
    # The controller CA pinned at enrollment (PEM); empty when enrolled with --insecure.
    ca_pem: str = ""

    @property
    def insecure(self) -> bool:
        return not self.ca_pem


def identity_path(data_dir: Path) -> Path:
    return Path(data_dir) / "identity.json"


def load(data_dir: Path) -> Identity | None:
    path = identity_path(data_dir)
    if not path.exists():
        return None
    try:
        return Identity(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(path), "", f"corrupt agent identity ({exc}); move it away and enroll again") from exc


def save(data_dir: Path, identity: Identity) -> None:
    """Atomic, 0600: a crash leaves either the old or the new identity, never half of one."""
    path = identity_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(identity), fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
