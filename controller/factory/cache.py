"""Content-hash cache of stage outputs, shared by every job of a controller (``<data>/cache/stages``).

A step's key hashes (stage name, stage version, the parsed config as canonical JSON, the keys of the steps
it reads from, the content of any existing absolute path named in its config): a Merkle hash over the plan,
so every key is known before anything runs (``slmops build --plan`` prints them). A step that is never cached
(``publish``, ``registry-variant``) has no key; steps reading from it use the digest of what it produced
instead (:func:`input_key`). A hit reuses the stored outputs without running the stage.

Entries are immutable folders ``<root>/<key>/`` holding the stage's work dir and ``result.json`` (for a step
that ran on a Ray worker, the work dir holds only the index of its files in the blob store); they are
written by renaming a finished work dir into place, so a half-written entry is never visible. File hashes are
memoised by (path, size, mtime) so large model folders are hashed once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.factory.backends import packed
from shared.manifest import sha256_file

if TYPE_CHECKING:
    from controller.registry.blobstore.base import BlobStore

log = logging.getLogger(__name__)


class Fingerprints:
    """sha256 of files and folders, memoised on disk by (path, size, mtime_ns)."""

    def __init__(self, memo_path: Path | None = None) -> None:
        self.memo_path = memo_path
        self._memo: dict[str, str] = {}
        self._dirty = False
        if memo_path and memo_path.is_file():
            with contextlib.suppress(ValueError, OSError):
                self._memo = json.loads(memo_path.read_text())

    def file(self, path: Path) -> str:
        st = os.stat(path)
        memo_key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
        if memo_key not in self._memo:
            self._memo[memo_key] = sha256_file(Path(path))
            self._dirty = True
        return self._memo[memo_key]

    def folder(self, path: Path) -> str:
        digest = hashlib.sha256()
        root = Path(path)
        for item in sorted(p for p in root.rglob("*") if p.is_file()):
            digest.update(f"{item.relative_to(root).as_posix()}\0{self.file(item)}\n".encode())
        return digest.hexdigest()

    def path(self, path: Path) -> str:
        return self.folder(path) if Path(path).is_dir() else self.file(path)

    def save(self) -> None:
        if not (self.memo_path and self._dirty):
            return
        self.memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.memo_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._memo))
        tmp.replace(self.memo_path)
        self._dirty = False


def config_paths(value: Any) -> list[str]:
    """Absolute paths of existing files/folders named anywhere in a config."""
    found: list[str] = []
    if isinstance(value, str):
        if os.path.isabs(value) and os.path.exists(value):
            found.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            found.extend(config_paths(v))
    elif isinstance(value, (list, tuple)):
        for v in value:
            found.extend(config_paths(v))
    return found


def path_digests(config: dict[str, Any], fp: Fingerprints) -> dict[str, str]:
    """Content digests of the existing absolute paths a config names (part of its step's key)."""
    return {p: fp.path(Path(p)) for p in sorted(set(config_paths(config)))}


def input_key(stage: str, key: str, digest: str = "") -> str:
    """How a step's key names one input step: by that step's key, or by the digest of its outputs when it is
    never cached (its outputs can differ between runs of the same plan)."""
    return f"{stage}:{key}" if key else f"{stage}:out:{digest}"


def output_digest(outputs: dict[str, Path], fp: Fingerprints) -> str:
    """One digest of a step's outputs (on disk, or in the blob store behind an index: the same figure)."""
    digest = hashlib.sha256()
    for name in sorted(outputs):
        path = Path(outputs[name])
        digest.update(f"{name}\0{packed.digest(path, fp) if packed.exists(path) else 'missing'}\n".encode())
    return digest.hexdigest()


@dataclass
class CachedStep:
    key: str
    outputs: dict[str, Path]
    metrics: dict[str, Any]
    digest: str


class StageCache:
    def __init__(self, root: Path, blobs: BlobStore | None = None) -> None:
        """``blobs``: the store holding the files of entries that ran on Ray workers (a hit whose blobs are
        gone is a miss)."""
        self.blobs = blobs
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fingerprints = Fingerprints(self.root / "filehash.json")

    @staticmethod
    def key(
        stage: str, version: str, config: dict[str, Any], input_keys: list[str], path_digests: dict[str, str]
    ) -> str:
        """The cache key of a step (``input_keys``: :func:`input_key` of each step it reads from, in order)."""
        payload = json.dumps(
            {"stage": stage, "version": version, "config": config, "inputs": input_keys, "paths": path_digests},
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def path_digests(self, config: dict[str, Any]) -> dict[str, str]:
        return path_digests(config, self.fingerprints)

    def get(self, key: str) -> CachedStep | None:
        entry = self.root / key
        meta = entry / "result.json"
        if not meta.is_file():
            return None
        try:
            data = json.loads(meta.read_text())
        except (ValueError, OSError):
            return None
        outputs = {n: _resolve(entry, p) for n, p in data["outputs"].items()}
        if not all(packed.exists(p) for p in outputs.values()) or not self._blobs_present(entry):
            log.warning("cache entry %s lost an output; ignoring it", key)
            return None
        return CachedStep(key, outputs, data.get("metrics", {}), data["digest"])

    def _blobs_present(self, entry: Path) -> bool:
        rows = packed.read_index(entry) if self.blobs is not None else None
        return rows is None or all(self.blobs.exists(sha) for _rel, sha, _size in rows)  # type: ignore[union-attr]

    def put(
        self, key: str, work_dir: Path, outputs: dict[str, Path], metrics: dict[str, Any], digest: str
    ) -> CachedStep:
        """Move a finished work dir into the cache; returns the entry with relocated output paths."""
        work_dir = Path(work_dir).resolve()
        stored: dict[str, str] = {}
        for name, path in outputs.items():
            path = Path(path).resolve()
            stored[name] = (
                f"rel:{path.relative_to(work_dir).as_posix()}" if path.is_relative_to(work_dir) else str(path)
            )
        (work_dir / "result.json").write_text(
            json.dumps(
                {"outputs": stored, "metrics": metrics, "digest": digest, "created_unix": time.time()},
                indent=2,
                default=str,
            )
        )
        entry = self.root / key
        try:
            os.rename(work_dir, entry)
        except OSError:
            existing = self.get(key)
            if existing is None:
                raise
            shutil.rmtree(work_dir, ignore_errors=True)  # a concurrent job stored the same step first
            return existing
        self.fingerprints.save()
        return CachedStep(key, {n: _resolve(entry, p) for n, p in stored.items()}, metrics, digest)


def _resolve(entry: Path, stored: str) -> Path:
    return entry / stored[4:] if stored.startswith("rel:") else Path(stored)
