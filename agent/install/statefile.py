"""The install state file: JSON, written to a temp file, fsynced and renamed over the old one, so after a
crash it holds either the previous or the new snapshot, never a torn one."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from agent.install.states import ModelRef, State
from shared.durable import fsync_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class InstallRecord:
    """One install (or a rollback the controller asked for) from start to its terminal state."""

    kind: str  # "install" | "rollback"
    name: str
    version: str
    rollout_id: str = ""
    # The controller's try of this rollout on this device (DesiredModel.attempt; 0 from older controllers).
    rollout_attempt: int = 0
    manifest_b64: str = ""
    signature_b64: str = ""
    max_bytes_per_s: int = 0
    # The version that was current when the install started: what a failure rolls back to.
    prior: list[str] | None = None
    # For a requested rollback: the version to make current.
    target: list[str] | None = None
    attempts: dict[str, int] = field(default_factory=dict)
    transitions: int = 0
    last_event: str = ""
    error: str = ""
    # Files that failed VERIFY: never reuse a local copy of these again in this install.
    no_reuse: list[str] = field(default_factory=list)
    verify_failures: int = 0
    keep_partials: bool = False
    # False once the install failed in a way retrying the same manifest cannot fix (hashes, health check).
    retryable: bool = True
    stats: dict[str, int] = field(default_factory=dict)
    started_unix: float = field(default_factory=time.time)

    @classmethod
    def install(
        cls,
        ref: ModelRef,
        manifest_json: bytes,
        signature: bytes,
        rollout_id: str = "",
        attempt: int = 0,
        max_bytes_per_s: int = 0,
        *,
        prior: ModelRef | None = None,
    ) -> InstallRecord:
        """The record of an install of ``ref`` from its signed manifest; ``prior`` serves until it commits."""
        return cls(
            kind="install",
            name=ref.name,
            version=ref.version,
            rollout_id=rollout_id,
            rollout_attempt=int(attempt),
            manifest_b64=cls.encode(manifest_json),
            signature_b64=cls.encode(signature),
            max_bytes_per_s=int(max_bytes_per_s or 0),
            prior=[prior.name, prior.version] if prior else None,
        )

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.version)

    @property
    def prior_ref(self) -> ModelRef | None:
        return ModelRef(*self.prior) if self.prior else None

    @property
    def target_ref(self) -> ModelRef | None:
        return ModelRef(*self.target) if self.target else None

    @property
    def manifest_json(self) -> bytes:
        return base64.b64decode(self.manifest_b64)

    @property
    def signature(self) -> bytes:
        return base64.b64decode(self.signature_b64)

    @staticmethod
    def encode(data: bytes) -> str:
        return base64.b64encode(data).decode()


@dataclass
class Snapshot:
    state: State = State.IDLE
    record: InstallRecord | None = None
    # Outcome of the last finished install or rollback (for heartbeats and `slmops devices show`).
    message: str = ""
    updated_unix: float = 0.0

    def to_json(self) -> bytes:
        raw: dict[str, Any] = asdict(self)
        raw["format"] = FORMAT_VERSION
        raw["state"] = str(self.state)
        return json.dumps(raw, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Snapshot:
        raw = json.loads(data)
        raw.pop("format", None)
        record = raw.pop("record", None)
        if record:  # a field a newer agent added is dropped; one an older agent lacked takes its default
            known = {f.name for f in fields(InstallRecord)}
            record = {k: v for k, v in record.items() if k in known}
        return cls(
            state=State(raw.get("state", "IDLE")),
            record=InstallRecord(**record) if record else None,
            message=raw.get("message", ""),
            updated_unix=raw.get("updated_unix", 0.0),
        )


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> Snapshot:
        """The saved snapshot; IDLE when there is none. An unreadable file is moved aside (and logged)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Snapshot()
        try:
            return Snapshot.from_json(data)
        except (ValueError, TypeError, KeyError) as exc:
            aside = self.path.with_suffix(f".corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("install state file %s is unreadable (%s): moved to %s, starting IDLE", self.path, exc, aside)
            return Snapshot()

    def save(self, snap: Snapshot) -> None:
        snap.updated_unix = time.time()
        write_atomic(self.path, snap.to_json())


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves either the old or the new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
