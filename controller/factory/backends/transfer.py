"""Stage outputs through the blob store, for runners whose tasks run on other machines.

A stage task works in a scratch folder of its node and, when it finishes, *packs* it: every file goes into the
controller's blob store (content addressed, so an unchanged file is stored once) and the task returns the list
of (relative path, sha256, size). The job worker records that list as the step's index (``packed.py``), never
the files: the stage cache keeps the index, and ``publish`` registers the blobs by digest. A later task
*materialises* an input from its pack into its own scratch folder (hard links from a filesystem store on the
same machine, a download from S3 elsewhere) and removes it when it ends. Inputs that exist on the task's node
(a user's dataset named in the recipe, on a shared filesystem) are used in place.

The store is the one the controller was configured with (``blob_store`` in its settings, recorded in
``<data_dir>/blob_store.json``): the S3 backend in a real cluster, whose credentials each worker takes from
boto3's default chain.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from controller.registry.blobstore.base import copy_blob_to

if TYPE_CHECKING:
    from controller.factory.cache import Fingerprints
    from controller.registry.blobstore.base import BlobStore


@dataclass
class Packed:
    """A file or folder stored in the blob store: its path where it was packed and its files."""

    root: str
    # (path relative to root, "" for a single file; sha256; size)
    files: list[tuple[str, str, int]] = field(default_factory=list)
    # True: ``root`` on the controller holds only an index (the files are in the store, never used in place)
    remote: bool = False


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


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def localize(
    path: str, packs: dict[str, Packed], blobs: BlobStore | None, scratch: Path, seen: dict[str, str] | None = None
) -> str:
    """Where ``path`` is on this node: materialised from its pack under ``scratch`` when the pack is remote
    (only an index on the controller) or the path is not on this node; else ``path`` itself. ``seen`` records
    each materialised root (local root -> original root)."""
    if blobs is None:
        return path
    for root, packed in packs.items():
        if _under(path, root) and (packed.remote or not os.path.exists(path)):
            local_root = scratch / hashlib.sha256(root.encode()).hexdigest()[:16] / Path(root).name
            materialize(blobs, packed, local_root)
            if seen is not None:
                seen[str(local_root)] = root
            return str(local_root / os.path.relpath(path, root)) if path != root else str(local_root)
    return path


def unlocalize(path: str, seen: dict[str, str]) -> str:
    """The controller-side path of a path under a materialised root (an output that passes an input on)."""
    for local_root, root in seen.items():
        if _under(path, local_root):
            return root if path == local_root else os.path.join(root, os.path.relpath(path, local_root))
    return path
