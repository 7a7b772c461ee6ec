"""Artifact manifests: content hashes of a model folder, canonical JSON, ed25519 signatures.

The controller signs each variant's manifest with its ed25519 key (created on first start); agents pin the
public key at enrollment and refuse a manifest whose signature or file hashes do not match.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import Cancelled, IntegrityError, InvalidArgument

CHUNK = 1 << 20


def sha256_file(path: Path | str, cancel: threading.Event | None = None) -> str:
    """The file's sha256 (hex); raises Cancelled between blocks once ``cancel`` is set (a stopping agent)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"hashing {path} stopped: cancelled")
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int


@dataclass
class Manifest:
    """What an agent needs to fetch, check and run one variant."""

    name: str
    version: str
    profile: str
    precision: str
    execution_provider: str
    files: list[FileEntry]
    runtime: str = "ort-genai"
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    # Golden prompts and the outputs this variant must give (the agents' health checks).
    golden: list[dict[str, str]] = field(default_factory=list)
    # For a runtime LoRA adapter: the base variant's "name:version" it applies to.
    adapter_of: str = ""
    # The task's output JSON schema; with enforce_schema the agent guides chat requests by it by default.
    output_schema: dict[str, Any] | None = None
    enforce_schema: bool = False
    created_unix: float = 0.0

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        """Canonical bytes: sorted keys, no whitespace, so the signature is reproducible."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            raw = json.loads(data)
            files = [FileEntry(**f) for f in raw.pop("files")]
            return cls(files=files, **raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidArgument(f"malformed manifest: {exc}") from exc


def hash_folder(folder: Path) -> list[FileEntry]:
    """Every regular file under ``folder`` (relative paths, sorted) with its sha256 and size."""
    entries = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        entries.append(FileEntry(path.relative_to(folder).as_posix(), sha256_file(path), path.stat().st_size))
    return entries


# --- keys ------------------------------------------------------------------------------------------------
def _load_signing_key(path: Path) -> Ed25519PrivateKey:
    for _ in range(50):  # a process that just created the file may not have written it yet
        data = path.read_bytes()
        if data:
            break
        time.sleep(0.02)
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgument(f"{path} is not an ed25519 private key")
    return key


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The manifest signing key kept in ``path``, created 0600 on first start. Replicas and job workers sharing a
    data dir may start at once: the one that loses the race to create the file loads the winner's key."""
    path = Path(path)
    if path.exists():
        return _load_signing_key(path)
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _load_signing_key(path)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public_key_pem: bytes) -> str:
    return hashlib.sha256(public_key_pem).hexdigest()[:16]


def sign(manifest_json: bytes, key: Ed25519PrivateKey) -> bytes:
    return key.sign(manifest_json)


def verify(manifest_json: bytes, signature: bytes, public_key_pem: bytes) -> Manifest:
    """Check the signature with the pinned public key and parse; raises IntegrityError on mismatch."""
    public = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(public, Ed25519PublicKey):
        raise IntegrityError("the pinned manifest key is not an ed25519 public key")
    try:
        public.verify(signature, manifest_json)
    except InvalidSignature as exc:
        raise IntegrityError(
            "manifest signature does not match the controller key pinned at enrollment: refusing it"
        ) from exc
    return Manifest.from_json(manifest_json)


def verify_file(path: Path, entry: FileEntry) -> None:
    size = path.stat().st_size if path.exists() else -1
    if size != entry.size:
        raise IntegrityError(f"{entry.path}: size {size} != {entry.size} in the manifest")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise IntegrityError(f"{entry.path}: sha256 {actual[:12]}… does not match the manifest ({entry.sha256[:12]}…)")
