"""Stage outputs through the blob store, for runners whose tasks run on other machines.

A stage task that finishes *packs* its work dir: every file goes into the controller's blob store (content
addressed, so an unchanged file is stored once) and the task returns the list of (relative path, sha256, size).
A later task *materialises* an input that is not on its node from such a pack into a scratch folder; the job
worker materialises a task's outputs into the step's work dir when they are not on its disk (the stage cache
and ``publish`` read them there). On one machine, or with a shared filesystem, every path is already present
and nothing is copied.

The store is the one the controller was configured with (``blob_store`` in its settings, recorded in
``<data_dir>/blob_store.json``): the S3 backend in a real cluster, whose credentials each worker takes from
boto3's default chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.registry.blobstore.base import copy_blob_to

if TYPE_CHECKING:
    from controller.factory.cache import Fingerprints
    from controller.registry.blobstore.base import BlobStore

CONFIG_FILE = "blob_store.json"


@dataclass
class Packed:
    """A file or folder stored in the blob store: its path where it was packed and its files."""

    root: str
    # (path relative to root, "" for a single file; sha256; size)
    files: list[tuple[str, str, int]] = field(default_factory=list)


def blob_config(data_dir: Path) -> dict[str, Any]:
    """The blob store settings the controller recorded for its workers (``{}``: the filesystem default)."""
    path = Path(data_dir) / CONFIG_FILE
    try:
        return dict(json.loads(path.read_text())) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def open_blobs(config: dict[str, Any], data_dir: Path) -> BlobStore:
    """The blob store of ``config`` (see :func:`blob_config`), built in this process."""
    from controller.core.settings import ControllerSettings
    from controller.registry.blobstore import build_blob_store

    return build_blob_store(ControllerSettings(data_dir=Path(data_dir), **config), check=False)


def pack(blobs: BlobStore, path: Path, fp: Fingerprints | None = None) -> Packed:
    """Put the file or every file under the folder ``path`` into the store (idempotent).

    With ``fp`` (the stage cache's memoised hashes) a file whose blob is already stored is neither read nor
    copied again.
    """
    path = Path(path)
    items = (
        [("", path)]
        if path.is_file()
        else [(p.relative_to(path).as_posix(), p) for p in sorted(path.rglob("*")) if p.is_file()]
    )
    files = []
    for rel, item in items:
        if fp is not None:
            sha = fp.file(item)
            if not blobs.exists(sha):
                blobs.put_file(item, link=True)
            files.append((rel, sha, item.stat().st_size))
        else:
            ref = blobs.put_file(item, link=True)
            files.append((rel, ref.sha256, ref.size))
    return Packed(str(path), files)


def materialize(blobs: BlobStore, packed: Packed, dest: Path) -> Path:
    """Write ``packed`` at ``dest`` (a file, or a folder of its files); files already there with the right
    size are kept. Returns ``dest``."""
    dest = Path(dest)
    for rel, sha, size in packed.files:
        target = dest / rel if rel else dest
        if target.is_file() and target.stat().st_size == size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        source = blobs.local_path(sha)
        if source is not None:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
        else:
            copy_blob_to(blobs, sha, tmp)
        tmp.replace(target)
    if not packed.files and not dest.exists():
        dest.mkdir(parents=True)
    return dest


def localize(path: str, packs: dict[str, Packed], blobs: BlobStore | None, scratch: Path) -> str:
    """``path`` if it exists on this node; else where its pack was materialised under ``scratch``."""
    if os.path.exists(path) or blobs is None:
        return path
    for root, packed in packs.items():
        if path == root or path.startswith(root.rstrip("/") + "/"):
            local_root = scratch / hashlib.sha256(root.encode()).hexdigest()[:16] / Path(root).name
            materialize(blobs, packed, local_root)
            return str(local_root / os.path.relpath(path, root)) if path != root else str(local_root)
    return path
