"""Protobuf conversion for the registry (used only at the API boundary)."""

from __future__ import annotations

import json

from controller.registry.integrity import VerifyReport
from controller.registry.versions import ModelVersionInfo
from controller.store.tables import VariantRow
from shared.manifest import Manifest
from shared.pb import admin_pb2, common_pb2


def variant_to_pb(row: VariantRow) -> admin_pb2.Variant:
    manifest = Manifest.from_json(row.manifest_json)
    return admin_pb2.Variant(
        profile=row.profile,
        precision=row.precision,
        execution_provider=row.execution_provider,
        files=[common_pb2.ArtifactFile(path=f.path, sha256=f.sha256, size=f.size) for f in manifest.files],
        metrics={k: float(v) for k, v in json.loads(row.metrics_json or "{}").items()},
        manifest=common_pb2.SignedManifest(manifest_json=row.manifest_json, signature=row.signature, key_id=row.key_id),
        size_bytes=row.size_bytes,
        adapter_of=row.adapter_of,
    )


def model_version_to_pb(info: ModelVersionInfo) -> admin_pb2.ModelVersion:
    return admin_pb2.ModelVersion(
        ref=common_pb2.ModelRef(name=info.name, version=info.version),
        variants=[variant_to_pb(v) for v in info.variants],
        created_unix=info.created_at,
        lineage_json=json.dumps(info.lineage, sort_keys=True),
        job_id=info.job_id,
    )


def verify_report_to_pb(report: VerifyReport) -> admin_pb2.VerifyModelsResponse:
    return admin_pb2.VerifyModelsResponse(
        variants_checked=report.variants_checked,
        blobs_checked=report.blobs_checked,
        bytes_checked=report.bytes_checked,
        problems=[
            admin_pb2.RegistryProblem(kind=p.kind, sha256=p.sha256, used_by=p.used_by, detail=p.detail)
            for p in report.problems
        ],
    )
