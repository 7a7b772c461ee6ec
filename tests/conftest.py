"""Shared test fixtures. Area fixtures live in tests/fixtures/*.py and are loaded here."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# moto's S3 server takes any credentials; set here so the Ray head (and so its workers) inherits them too
for _var, _value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
    os.environ.setdefault(_var, _value)

pytest_plugins = [
    "tests.fixtures.stores",
    "tests.fixtures.tiny_models",
    "tests.fixtures.serving",
    "tests.fixtures.controller",
    "tests.fixtures.s3",
    "tests.fixtures.ray",
]


@pytest.fixture(scope="session")
def session_cache() -> Path:
    """A folder shared by the whole test session (trained tiny models, built variants)."""
    root = Path(os.environ.get("SLMOPS_TEST_CACHE", Path(__file__).resolve().parent.parent / ".cache" / "tests"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def unique_name() -> Iterator[str]:
    yield "t" + uuid.uuid4().hex[:12]
