"""Blob garbage collection: ``slmops models prune [--keep N] [--dry-run]``.

1. With ``keep`` > 0, each model's versions beyond its newest ``keep`` are removed from the registry, except a
   version some device has installed, that a rollout names as a device's previous version (what a rollback
   installs), or that a live rollout is rolling out.
2. Then every blob that no remaining manifest references (nor an entry of the stage cache, whose steps that ran
   on Ray workers keep their files in the store) is deleted from the blob store. A blob younger than
   ``min_age_s`` is never deleted: a publish uploads its blobs before it writes the registry rows, so a fresh
   unreferenced blob may belong to a publish in progress.

The registry rows go in one transaction, before any blob is deleted: a failure half-way leaves at most
unreferenced blobs, which the next prune removes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlmodel import Session, col, delete, select

from controller.registry.blobstore.base import BlobRef, BlobStore
from controller.registry.versions import version_key
from controller.rollout.spec import LIVE_STATES
from controller.store.db import Store
from controller.store.tables import Device, ModelVersionRow, Rollout, RolloutTarget, VariantRow
from shared.errors import InvalidArgument, NotFound
from shared.manifest import Manifest

log = logging.getLogger(__name__)

DEFAULT_MIN_AGE_S = 3600


@dataclass
class PruneResult:
    dry_run: bool
    removed: list[BlobRef] = field(default_factory=list)
    removed_versions: list[str] = field(default_factory=list)  # "NAME:VERSION"
    kept: int = 0  # blobs kept
    bytes_freed: int = 0


def in_use(session: Session) -> set[tuple[str, str]]:
    """(name, version) pairs a device runs, a rollback would install, or a live rollout installs."""
    used = {(d.installed_name, d.installed_version) for d in session.exec(select(Device)).all()}
    used |= {(t.prev_name, t.prev_version) for t in session.exec(select(RolloutTarget)).all()}
    live = select(Rollout).where(col(Rollout.state).in_(LIVE_STATES))
    used |= {(r.model_name, r.model_version) for r in session.exec(live).all()}
    return {u for u in used if u[0] and u[1]}


def versions_to_remove(session: Session, keep: int) -> list[tuple[str, str]]:
    """Versions beyond each model's newest ``keep`` that nothing uses (none when ``keep`` is 0)."""
    if keep <= 0:
        return []
    used = in_use(session)
    by_name: dict[str, list[str]] = {}
    for row in session.exec(select(ModelVersionRow)).all():
        by_name.setdefault(row.name, []).append(row.version)
    doomed = []
    for name, versions in sorted(by_name.items()):
        for version in sorted(versions, key=version_key, reverse=True)[keep:]:
            if (name, version) not in used:
                doomed.append((name, version))
    return doomed


def referenced(variants: Iterable[VariantRow], skip: set[tuple[str, str]]) -> set[str]:
    """The sha256 of every file of the variants' manifests, except those of versions in ``skip``."""
    shas = set()
    for row in variants:
        if (row.name, row.version) in skip:
            continue
        shas.update(f.sha256 for f in Manifest.from_json(bytes(row.manifest_json)).files)
    return shas


def prune(
    store: Store,
    blobs: BlobStore,
    keep: int = 0,
    dry_run: bool = False,
    min_age_s: float = DEFAULT_MIN_AGE_S,
    also_keep: frozenset[str] | set[str] = frozenset(),
) -> PruneResult:
    """``also_keep``: blobs needed outside the registry (the stage cache's entries built on Ray workers)."""
    if keep < 0:
        raise InvalidArgument(f"--keep {keep}: keep at least 0 versions per model (0 keeps all of them)")
    result = PruneResult(dry_run=dry_run)
    with store.session() as s:
        doomed = versions_to_remove(s, keep)
        needed = referenced(s.exec(select(VariantRow)).all(), set(doomed)) | set(also_keep)
    result.removed_versions = [f"{n}:{v}" for n, v in doomed]
    cutoff = time.time() - min_age_s
    for sha in blobs.iterate():
        if sha in needed:
            result.kept += 1
            continue
        try:
            info = blobs.stat(sha)
        except NotFound:
            continue
        if info.modified > cutoff:
            result.kept += 1
            continue
        result.removed.append(BlobRef(sha, info.size))
        result.bytes_freed += info.size
    if not dry_run:
        _remove_versions(store, doomed)
        for ref in result.removed:
            blobs.delete(ref.sha256)
    log.info(
        "prune%s: %d version(s), %d blob(s) (%d bytes) removed, %d blob(s) kept",
        " (dry run)" if dry_run else "",
        len(doomed),
        len(result.removed),
        result.bytes_freed,
        result.kept,
    )
    return result


def _remove_versions(store: Store, doomed: list[tuple[str, str]]) -> None:
    if not doomed:
        return
    with store.session() as s:
        for name, version in doomed:
            s.exec(delete(VariantRow).where(col(VariantRow.name) == name, col(VariantRow.version) == version))
            s.exec(
                delete(ModelVersionRow).where(
                    col(ModelVersionRow.name) == name, col(ModelVersionRow.version) == version
                )
            )
