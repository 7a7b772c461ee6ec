"""The install tests' fixtures (a gRPC blob server, in-process agents) over the S3 blob store."""

from __future__ import annotations

import pytest

from controller.registry.blobstore.base import BlobStore
from tests.integration.install.conftest import (  # noqa: F401 - fixtures
    address,
    agent_dir,
    channel,
    key_file,
    make_agent,
    publisher,
    servicer,
    signing_key,
)


@pytest.fixture
def store(s3_store) -> BlobStore:  # type: ignore[no-untyped-def]
    return s3_store
