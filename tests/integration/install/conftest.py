"""Fixtures for the install tests: a signing key, a blob store with a real gRPC server in front of it, and
in-process agents whose serving layer is a file (see agent_proc.make_callables)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.install.grpc_fetch import CHANNEL_OPTIONS, grpc_fetch
from agent.install.machine import InstallMachine
from agent.install.transfer import RetryPolicy
from controller.registry.blobs import BlobStore
from shared.manifest import public_pem
from tests.integration.install.agent_proc import make_callables
from tests.integration.install.blobserver import BlobServicer, Publisher, serve

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def key_file(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "controller.pub.pem"
    path.write_bytes(public_pem(signing_key))
    return path


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@pytest.fixture
def publisher(store: BlobStore, signing_key: Ed25519PrivateKey, tmp_path: Path) -> Publisher:
    return Publisher(store, signing_key, tmp_path / "builds")


@pytest.fixture
def servicer(store: BlobStore) -> BlobServicer:
    return BlobServicer(store)


@pytest.fixture
def address(servicer: BlobServicer) -> Iterator[str]:
    with serve(servicer) as addr:
        yield addr


@pytest.fixture
def channel(address: str) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    yield ch
    ch.close()


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    path = tmp_path / "agent"
    path.mkdir()
    return path


@pytest.fixture
def make_agent(channel: grpc.Channel, agent_dir: Path, signing_key: Ed25519PrivateKey):
    """An in-process agent on ``agent_dir``; keyword arguments override InstallMachine options."""
    transitions: list = []

    def factory(**overrides) -> InstallMachine:
        activate, health_check, report, _ = make_callables(agent_dir)

        def report_both(t):
            transitions.append(t)
            report(t)

        kwargs = {
            "retry": RetryPolicy(max_attempts=3, initial_s=0.01, max_s=0.05),
            "retry_backoff_s": 0.01,
            "report": report_both,
        }
        kwargs.update(overrides)
        fetch = kwargs.pop("fetch", grpc_fetch(channel))
        machine = InstallMachine(
            agent_dir,
            fetch,
            public_pem(signing_key),
            kwargs.pop("activate", activate),
            kwargs.pop("health_check", health_check),
            **kwargs,
        )
        machine.transitions = transitions  # type: ignore[attr-defined]
        return machine

    return factory


def model_files(version: str, healthy: bool = True, weights: bytes | None = None) -> dict[str, bytes]:
    """A small stand-in model folder: a shared tokenizer, per-version weights, a health marker."""
    return {
        "tokenizer.json": b'{"vocab": "shared between versions"}' * 200,
        "genai_config.json": b'{"model": {"type": "llama"}}',
        "model.onnx.data": weights if weights is not None else os.urandom(300_000),
        "sub/adapter.onnx_adapter": f"adapter {version}".encode() * 1000,
        "health.txt": b"ok" if healthy else b"broken",
    }
