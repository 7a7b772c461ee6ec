"""Compatibility names: the filesystem blob store is :class:`BlobStore` here (see :mod:`.blobstore`)."""

from __future__ import annotations

from controller.registry.blobstore.base import BlobInfo, BlobRef, check_sha
from controller.registry.blobstore.filesystem import FileBlobStore

BlobStore = FileBlobStore

__all__ = ["BlobInfo", "BlobRef", "BlobStore", "FileBlobStore", "check_sha"]
