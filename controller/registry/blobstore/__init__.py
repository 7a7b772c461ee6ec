"""Blob stores: the :class:`BlobStore` interface and its backends, chosen by ``blob_store`` in the settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from controller.registry.blobstore.base import BlobInfo, BlobRef, BlobStore, check_sha
from controller.registry.blobstore.filesystem import FileBlobStore
from shared.errors import ConfigError

if TYPE_CHECKING:
    from controller.core.settings import ControllerSettings

__all__ = [
    "BlobInfo",
    "BlobRef",
    "BlobStore",
    "FileBlobStore",
    "build_blob_store",
    "check_sha",
    "open_for_data_dir",
]

# The controller writes its blob store's settings here at start so that build workers (other processes, given
# only the data dir) publish to the same store. No credentials: those come from boto3's chain in each process.
CONFIG_FILE = "blob_store.json"


def build_blob_store(settings: ControllerSettings, *, check: bool = True) -> BlobStore:
    """The backend the settings name; ``check``: fail now (Unavailable naming it) when it is unreachable."""
    if settings.blob_store == "file":
        return FileBlobStore(Path(settings.data_dir) / "artifacts")
    if not settings.s3_bucket:
        raise ConfigError("settings", "s3_bucket", "blob_store is 's3' but no bucket is set (SLMOPS_S3_BUCKET)")
    from controller.registry.blobstore.s3 import S3BlobStore

    store = S3BlobStore(
        settings.s3_bucket,
        prefix=settings.s3_prefix,
        endpoint_url=settings.s3_endpoint_url or None,
        region=settings.s3_region or None,
    )
    if check:
        store.check_reachable()
    return store


def write_config(settings: ControllerSettings) -> None:
    """Record the blob store's settings in the data dir for the build workers (see :func:`open_for_data_dir`)."""
    keys = ("blob_store", "s3_bucket", "s3_prefix", "s3_endpoint_url", "s3_region")
    path = Path(settings.data_dir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: getattr(settings, k) for k in keys}, sort_keys=True))
    tmp.replace(path)


def recorded_config(data_dir: Path) -> dict[str, str]:
    """The blob store settings the controller of ``data_dir`` recorded (``{}``: none, the filesystem store)."""
    path = Path(data_dir) / CONFIG_FILE
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def from_config(config: dict[str, str], data_dir: Path) -> BlobStore:
    """The blob store of recorded ``config`` (see :func:`recorded_config`), built in this process."""
    from controller.core.settings import ControllerSettings

    return build_blob_store(ControllerSettings(data_dir=Path(data_dir), **config), check=False)


def open_for_data_dir(data_dir: Path) -> BlobStore:
    """The blob store the controller of ``data_dir`` uses (the filesystem one when it recorded none)."""
    return from_config(recorded_config(data_dir), data_dir)
