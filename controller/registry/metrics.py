"""Prometheus figures of the artifact byte path (served on the controller's ``/metrics``)."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge

#: Every artifact byte the controller itself sent to an agent, by path: ``http`` (the artifact server, HTTPS or
#: plain) and ``grpc`` (the DownloadArtifact fallback). With the S3 blob store agents download from presigned URLs,
#: so this stays 0 (bench/rollout.py --s3 reports it as ``controller_artifact_bytes``).
ARTIFACT_BYTES = Counter(
    "slmops_controller_artifact_bytes", "Artifact bytes the controller itself served to agents", ["path"]
)
#: Downloads the artifact server refused with 503 + Retry-After because every download slot was taken.
ARTIFACT_BUSY = Counter("slmops_controller_artifact_busy", "Artifact downloads refused with 503 (all slots busy)")
ARTIFACT_ACTIVE = Gauge("slmops_controller_artifact_downloads", "Artifact downloads the controller is sending now")
HTTP, GRPC = "http", "grpc"


def artifact_bytes_served() -> int:
    """Every artifact byte this process has served so far, all paths together."""
    name = "slmops_controller_artifact_bytes_total"
    return int(sum(REGISTRY.get_sample_value(name, {"path": path}) or 0 for path in (HTTP, GRPC)))
