"""Fixtures for the factory integration tests: a registry on a temp data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.registry.blobs import BlobStore
from controller.registry.registry import Registry
from controller.store.db import Store
from shared.manifest import load_or_create_signing_key


@pytest.fixture
def registry(sqlite_store: Store, tmp_path: Path) -> Registry:
    key = load_or_create_signing_key(tmp_path / "keys" / "manifest_ed25519.pem")
    return Registry(sqlite_store, BlobStore(tmp_path / "artifacts"), key)
