"""The model registry: signed, content-addressed variants per (model name, version, device profile).

Publishing stores each variant folder's files in the blob store (by sha256; invisible until referenced),
then writes the version row, one signed manifest per variant and the evaluation baselines in ONE database
transaction. Until that commits nothing is visible; a failed or cancelled job leaves the registry exactly
as it was (at most some unreferenced blobs remain, which garbage collection may delete).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlmodel import col, select

from controller.registry.blobstore.base import BlobStore, copy_blob_to, verify_blob
from controller.registry.versions import ModelVersionInfo, check_model_name, next_version, version_key
from controller.store.db import Store
from controller.store.tables import Baseline, ModelVersionRow, VariantRow
from shared.errors import IntegrityError, InvalidArgument, NotFound, Unavailable
from shared.manifest import FileEntry, Manifest, key_id, public_pem, sign, verify

log = logging.getLogger(__name__)

PUBLISH_ATTEMPTS = 5


@dataclass
class VariantSpec:
    """One variant to publish: a built model folder for a device profile and what is known about it."""

    profile: str
    precision: str
    execution_provider: str
    folder: Path
    runtime: str = "ort-genai"
    metrics: dict[str, float] = field(default_factory=dict)
    # Golden prompts with THIS variant's outputs: {"prompt", "messages" (JSON), "expected", "max_new_tokens"}.
    golden: list[dict[str, str]] = field(default_factory=list)
    adapter_of: str = ""
    # The task's output JSON schema (agents can enforce it by guided decoding); None: free text.
    output_schema: dict[str, Any] | None = None
    # The folder's files when they are already blobs in this registry's store (built on a Ray worker, which
    # stored them): registered by digest, nothing is read or copied. None: store the files of ``folder``.
    stored_files: list[FileEntry] | None = None


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Registry:
    def __init__(self, store: Store, blobs: BlobStore, signing_key: Ed25519PrivateKey) -> None:
        self.store = store
        self.blobs = blobs
        self._key = signing_key
        self._public_pem = public_pem(signing_key)
        self.key_id = key_id(self._public_pem)

    @property
    def public_key_pem(self) -> bytes:
        return self._public_pem

    # --- publishing ------------------------------------------------------------------------------------
    def publish(self, name: str, variants: list[VariantSpec], lineage: dict[str, Any], job_id: str = "") -> str:
        """Publish a new version of ``name`` with ``variants``; returns the version ("1", "2", ...)."""
        check_model_name(name)
        if not variants:
            raise InvalidArgument(f"nothing to publish for '{name}': no variants")
        profiles = [v.profile for v in variants]
        if len(set(profiles)) != len(profiles):
            raise InvalidArgument(f"publishing '{name}': a profile appears twice in {profiles}")
        stored = self._upload(name, variants)
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                return self._commit(name, stored, lineage, job_id)
            except DbIntegrityError:
                if attempt == PUBLISH_ATTEMPTS - 1:
                    raise
                log.info("version of '%s' taken by a concurrent publish; retrying", name)
        raise AssertionError("unreachable")

    def _upload(self, name: str, variants: list[VariantSpec]) -> list[tuple[VariantSpec, list[Any]]]:
        """Every variant's files into the blob store, before any registry row is written."""
        stored = []
        for spec in variants:
            if spec.stored_files is not None:
                stored.append((spec, self._check_stored(name, spec)))
                continue
            if not Path(spec.folder).is_dir():
                raise NotFound(f"variant folder for profile '{spec.profile}' does not exist: {spec.folder}")
            try:
                stored.append((spec, self.blobs.put_folder(Path(spec.folder), link=True)))
            except Unavailable as exc:
                raise Unavailable(
                    f"publishing '{name}' failed: {exc.message}; nothing was published (the registry is unchanged)"
                ) from exc
            except OSError as exc:
                raise Unavailable(
                    f"publishing '{name}' failed writing to the blob store ({self.blobs.description}): {exc}; "
                    "nothing was published (the registry is unchanged)"
                ) from exc
        return stored

    def _check_stored(self, name: str, spec: VariantSpec) -> list[FileEntry]:
        """``spec.stored_files``, each checked to be in the store with its size (a stat, no bytes read)."""
        files = list(spec.stored_files or [])
        for entry in files:
            try:
                size = self.blobs.size(entry.sha256)
            except NotFound as exc:
                raise NotFound(
                    f"publishing '{name}' failed: {spec.profile}/{entry.path} (blob {entry.sha256[:12]}…) is not in "
                    f"the blob store ({self.blobs.description}) though its step's index names it (was the store "
                    "changed?); rebuild after removing <data dir>/cache/stages; nothing was published"
                ) from exc
            except Unavailable as exc:
                raise Unavailable(
                    f"publishing '{name}' failed: {exc.message}; nothing was published (the registry is unchanged)"
                ) from exc
            if size != entry.size:
                raise IntegrityError(
                    f"publishing '{name}' failed: {spec.profile}/{entry.path} is {size} bytes in the blob store, "
                    f"{entry.size} in its step's index; nothing was published"
                )
        return files

    def _commit(
        self, name: str, stored: list[tuple[VariantSpec, list[Any]]], lineage: dict[str, Any], job_id: str
    ) -> str:
        now = time.time()
        with self.store.session() as s:
            existing = s.exec(select(ModelVersionRow.version).where(ModelVersionRow.name == name)).all()
            version = next_version(existing)
            s.add(
                ModelVersionRow(
                    name=name,
                    version=version,
                    created_at=now,
                    lineage_json=json.dumps(lineage, sort_keys=True),
                    job_id=job_id,
                )
            )
            for spec, files in stored:
                metrics = numeric_metrics(spec.metrics)
                manifest = Manifest(
                    name=name,
                    version=version,
                    profile=spec.profile,
                    precision=spec.precision,
                    execution_provider=spec.execution_provider,
                    files=files,
                    runtime=spec.runtime,
                    metrics=metrics,
                    lineage=lineage,
                    golden=spec.golden,
                    adapter_of=spec.adapter_of,
                    output_schema=spec.output_schema,
                    created_unix=now,
                )
                data = manifest.to_json()
                s.add(
                    VariantRow(
                        name=name,
                        version=version,
                        profile=spec.profile,
                        precision=spec.precision,
                        execution_provider=spec.execution_provider,
                        manifest_json=data,
                        signature=sign(data, self._key),
                        key_id=self.key_id,
                        metrics_json=json.dumps(metrics, sort_keys=True),
                        size_bytes=manifest.total_size,
                        adapter_of=spec.adapter_of,
                    )
                )
                if metrics:
                    s.add(
                        Baseline(
                            profile=spec.profile,
                            model_name=name,
                            model_version=version,
                            metrics_json=json.dumps(metrics, sort_keys=True),
                            captured_at=now,
                            source="evaluation",
                        )
                    )
            s.flush()
        log.info("published %s:%s with variants %s", name, version, ", ".join(v.profile for v, _ in stored))
        return version

    # --- reading ---------------------------------------------------------------------------------------
    def list_models(self, name: str | None = None) -> list[ModelVersionInfo]:
        """Versions (newest first within a name; names alphabetical), each with its variants."""
        with self.store.session() as s:
            query = select(ModelVersionRow)
            if name:
                query = query.where(ModelVersionRow.name == name)
            rows = list(s.exec(query).all())
            vquery = select(VariantRow)
            if name:
                vquery = vquery.where(VariantRow.name == name)
            variants = list(s.exec(vquery).all())
        by_version: dict[tuple[str, str], list[VariantRow]] = {}
        for v in variants:
            by_version.setdefault((v.name, v.version), []).append(v)
        rows.sort(key=lambda r: version_key(r.version), reverse=True)
        rows.sort(key=lambda r: r.name)  # stable: newest first within each name
        return [ModelVersionInfo.from_rows(r, by_version.get((r.name, r.version), [])) for r in rows]

    def get_model(self, name: str, version: str = "") -> ModelVersionInfo:
        """One version with its variants; an empty version means the latest."""
        if not version:
            return self.latest(name)
        with self.store.session() as s:
            row = s.get(ModelVersionRow, (name, version))
            if row is None:
                known = list(s.exec(select(ModelVersionRow.version).where(ModelVersionRow.name == name)).all())
                listing = ", ".join(sorted(known, key=version_key)) or "none"
                raise NotFound(f"model {name}:{version} is not in the registry (versions of '{name}': {listing})")
            variants = list(
                s.exec(select(VariantRow).where(VariantRow.name == name, VariantRow.version == version)).all()
            )
        return ModelVersionInfo.from_rows(row, variants)

    def latest(self, name: str) -> ModelVersionInfo:
        with self.store.session() as s:
            versions = list(s.exec(select(ModelVersionRow.version).where(ModelVersionRow.name == name)).all())
        if not versions:
            raise NotFound(f"model '{name}' has no published versions: build it first (`slmops build RECIPE`)")
        return self.get_model(name, max(versions, key=version_key))

    def variant(self, name: str, version: str, profile: str) -> VariantRow:
        info = self.get_model(name, version)
        for v in info.variants:
            if v.profile == profile:
                return v
        raise NotFound(
            f"model {info.ref} has no variant for profile '{profile}' (available: {', '.join(info.profiles) or 'none'})"
        )

    def names(self) -> list[str]:
        with self.store.session() as s:
            return sorted(set(s.exec(select(col(ModelVersionRow.name))).all()))

    # --- checking --------------------------------------------------------------------------------------
    def verify_variant(self, row: VariantRow, check_blobs: bool = True) -> Manifest:
        """Check the row's manifest signature against this registry's key (and that every blob is intact)."""
        manifest = verify(row.manifest_json, row.signature, self._public_pem)
        if (manifest.name, manifest.version, manifest.profile) != (row.name, row.version, row.profile):
            raise IntegrityError(
                f"manifest of {row.name}:{row.version}/{row.profile} names {manifest.ref}/{manifest.profile}"
            )
        if check_blobs:
            for entry in manifest.files:
                verify_blob(self.blobs, entry)
        return manifest

    def signed_files(self, name: str, version: str, profile: str) -> Manifest:
        """The variant's signed manifest, its signature checked and each file's blob present with its size (a
        stat each, no bytes read): for a Ray worker that will fetch the files from the store itself."""
        row = self.variant(name, version, profile)
        manifest = self.verify_variant(row, check_blobs=False)
        for entry in manifest.files:
            if self.blobs.size(entry.sha256) != entry.size:
                raise IntegrityError(
                    f"{row.name}:{row.version}/{profile}: {entry.path} has the wrong size in the store"
                )
        return manifest

    def materialize(self, name: str, version: str, profile: str, dest: Path) -> Manifest:
        """Write the variant's files (checked against its signed manifest) into the empty folder ``dest``.

        Files are hard links to the blobs where the filesystem allows (read-only use), copies otherwise.
        """
        row = self.variant(name, version, profile)
        manifest = self.verify_variant(row, check_blobs=True)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for entry in manifest.files:
            target = (dest / entry.path).resolve()
            if not target.is_relative_to(root) or target == root:
                raise IntegrityError(f"manifest of {row.name}:{row.version}/{profile}: unsafe path {entry.path!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            source = self.blobs.local_path(entry.sha256)
            if source is None:
                copy_blob_to(self.blobs, entry.sha256, target)
                continue
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
        return manifest
