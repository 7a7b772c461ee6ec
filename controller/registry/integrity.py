"""Is the registry what its signed manifests say? Re-hashing blobs, and what was found (or reported) kept in the
``blobproblem`` table so that a rollout's pause message and ``rollout resume`` can name the blob.

A blob is not re-hashed on every download: DownloadArtifact streams a file from the page cache straight into
its messages (see ``transfer_pb.py``), and hashing it would read every byte a second time on the controller's
busiest path, for a check each agent already makes (VERIFY). Instead:

- ``slmops models verify [NAME[:VERSION]]`` (:func:`verify_registry`) re-hashes every blob the manifests
  reference and records corrupt or missing ones (and forgets those intact again);
- an agent whose sha256 check of a file failed says which file: :func:`note_reported` records that blob as
  ``reported`` (cheap: no hashing in the report RPC), the rollout's pause message names it, and ``rollout
  resume`` re-hashes it (:func:`recheck`) before retrying, refusing while the controller's copy is bad.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlmodel import Session, col, select

from controller.registry.blobstore.base import BlobStore, verify_blob
from controller.store.db import Store
from controller.store.tables import BlobProblem, VariantRow
from shared.errors import IntegrityError, InvalidArgument, NotFound
from shared.manifest import FileEntry, Manifest, verify

log = logging.getLogger(__name__)

REPORTED, CORRUPT, MISSING, SIGNATURE = "reported", "corrupt", "missing", "signature"


@dataclass
class Problem:
    kind: str  # corrupt | missing | signature | reported
    sha256: str
    used_by: list[str]
    detail: str


@dataclass
class VerifyReport:
    variants_checked: int = 0
    blobs_checked: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def use_of(manifest: Manifest, entry: FileEntry) -> str:
    return f"{manifest.ref}/{manifest.profile} {entry.path}"


def check_blob(blobs: BlobStore, entry: FileEntry) -> tuple[str, str] | None:
    """``(kind, detail)`` when the stored blob is not what ``entry`` says; None when it is intact."""
    try:
        verify_blob(blobs, entry)
    except NotFound:
        return MISSING, f"blob {entry.sha256} is not in the blob store"
    except IntegrityError as exc:
        return CORRUPT, f"the stored blob {entry.sha256} fails its check: {exc.message}"
    return None


def _variant_rows(session: Session, name: str, version: str) -> list[VariantRow]:
    query = select(VariantRow)
    if name:
        query = query.where(VariantRow.name == name)
    if version:
        query = query.where(VariantRow.version == version)
    rows = list(session.exec(query.order_by(col(VariantRow.name), col(VariantRow.version))).all())
    if name and not rows:
        ref = f"{name}:{version}" if version else f"'{name}'"
        raise NotFound(f"model {ref} has no variants in the registry; see `slmops models list`")
    return rows


def _manifests(rows: list[VariantRow], public_pem: bytes | None, report: VerifyReport) -> list[Manifest]:
    """Each row's manifest; one whose signature fails is reported (and its files still checked)."""
    out = []
    for row in rows:
        where = f"{row.name}:{row.version}/{row.profile}"
        try:
            if public_pem is None:
                out.append(Manifest.from_json(row.manifest_json))
                continue
            out.append(verify(row.manifest_json, row.signature, public_pem))
        except IntegrityError as exc:
            report.problems.append(Problem(SIGNATURE, "", [where], exc.message))
            out.append(Manifest.from_json(row.manifest_json))
        except InvalidArgument as exc:
            report.problems.append(Problem(SIGNATURE, "", [where], exc.message))
    return out


def _files(manifests: Iterable[Manifest]) -> dict[str, tuple[FileEntry, list[str]]]:
    """sha256 -> (an entry with that hash, every use of it)."""
    files: dict[str, tuple[FileEntry, list[str]]] = {}
    for manifest in manifests:
        for entry in manifest.files:
            files.setdefault(entry.sha256, (entry, []))[1].append(use_of(manifest, entry))
    return files


def verify_registry(
    store: Store, blobs: BlobStore, public_pem: bytes, name: str = "", version: str = ""
) -> VerifyReport:
    """Re-hash every blob referenced by the variants of ``name``/``version`` (all when empty); record what
    is corrupt or missing and forget problems of blobs found intact. Reads each blob once."""
    report = VerifyReport()
    with store.session() as session:
        rows = _variant_rows(session, name, version)
    manifests = _manifests(rows, public_pem, report)
    report.variants_checked = len(rows)
    files = _files(manifests)
    intact = []
    for sha, (entry, uses) in sorted(files.items()):
        found = check_blob(blobs, entry)
        report.blobs_checked += 1
        report.bytes_checked += entry.size if found is None or found[0] == CORRUPT else 0
        if found is None:
            intact.append(sha)
        else:
            report.problems.append(Problem(found[0], sha, uses, found[1]))
    _record(store, [p for p in report.problems if p.sha256], intact)
    scope = f"{name}:{version}" if version else (name or "the registry")
    log.info("verified %s: %d blob(s), %d problem(s)", scope, report.blobs_checked, len(report.problems))
    return report


def _record(store: Store, problems: list[Problem], intact: list[str]) -> None:
    now = time.time()
    with store.session() as session:
        for sha in intact:
            row = session.get(BlobProblem, sha)
            if row is not None:
                log.info("blob %s is intact again (%s): forgetting its problem", sha[:12], row.used_by)
                session.delete(row)
        for p in problems:
            row = session.get(BlobProblem, p.sha256) or BlobProblem(sha256=p.sha256)
            if row.kind != p.kind:
                log.warning("registry blob %s is %s (%s): %s", p.sha256[:12], p.kind, p.used_by[0], p.detail)
            row.kind, row.used_by, row.detail, row.detected_at = p.kind, p.used_by[0], p.detail[:500], now
            session.add(row)


# --- what agents report, and what a rollout needs to know ------------------------------------------------
def named_files(manifest: Manifest, message: str) -> list[FileEntry]:
    """The files of ``manifest`` that an agent's failure ``message`` says failed their size or sha256 check
    (the agent's VERIFY step words them ``<path>: sha256 …`` / ``<path>: size …``)."""
    return [f for f in manifest.files if f"{f.path}: sha256 " in message or f"{f.path}: size " in message]


def note_reported(session: Session, manifest_json: bytes, message: str, now: float) -> list[str]:
    """Record the blobs an agent's failure ``message`` names (unless already known); returns their hashes."""
    if ": sha256 " not in message and ": size " not in message:
        return []
    try:
        manifest = Manifest.from_json(manifest_json)
    except InvalidArgument:
        return []
    shas = []
    for entry in named_files(manifest, message):
        shas.append(entry.sha256)
        if session.get(BlobProblem, entry.sha256) is None:
            detail = f"an agent's sha256 check failed: {message}"[:500]
            session.add(
                BlobProblem(sha256=entry.sha256, used_by=use_of(manifest, entry), detail=detail, detected_at=now)
            )
            log.warning("agents report %s (blob %s) failing its sha256 check", use_of(manifest, entry), entry.sha256)
    return shas


def version_files(session: Session, name: str, version: str) -> dict[str, FileEntry]:
    """sha256 -> entry for every file of every variant of ``name:version``."""
    rows = session.exec(select(VariantRow).where(VariantRow.name == name, VariantRow.version == version)).all()
    files: dict[str, FileEntry] = {}
    for row in rows:
        try:
            manifest = Manifest.from_json(row.manifest_json)
        except InvalidArgument:
            continue
        files.update({f.sha256: f for f in manifest.files})
    return files


def problems_of(session: Session, name: str, version: str) -> list[BlobProblem]:
    """Known problems of the blobs ``name:version`` uses."""
    shas = list(version_files(session, name, version))
    if not shas:
        return []
    return list(session.exec(select(BlobProblem).where(col(BlobProblem.sha256).in_(shas))).all())


def describe(problems: Iterable[BlobProblem | Problem]) -> str:
    """The blobs and what is wrong with them, for a rollout message or an error ("" when none)."""
    parts = []
    for p in problems:
        use = p.used_by if isinstance(p.used_by, str) else ", ".join(p.used_by)
        what = "failed the devices' sha256 check" if p.kind == REPORTED else f"is {p.kind} on the controller"
        parts.append(f"{use} (blob {p.sha256[:12]}…) {what}")
    return "; ".join(parts)


def recheck(store: Store, blobs: BlobStore, name: str, version: str) -> list[Problem]:
    """Re-hash the blobs of ``name:version`` with a known problem; forget those intact, return the others."""
    with store.session() as session:
        files = version_files(session, name, version)
        known = list(session.exec(select(BlobProblem).where(col(BlobProblem.sha256).in_(list(files)))).all())
    problems, intact = [], []
    for row in known:
        found = check_blob(blobs, files[row.sha256])
        if found is None:
            intact.append(row.sha256)
        else:
            problems.append(Problem(found[0], row.sha256, [row.used_by], found[1]))
    _record(store, problems, intact)
    return problems
