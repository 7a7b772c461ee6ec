"""The registry on the S3 blob store (a real S3-protocol server: moto): publish, serve an agent's install,
a publish with the store down, and prune."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from sqlmodel import select

from agent.install.states import State
from controller.registry.blobstore.base import BlobStore
from controller.registry.blobstore.filesystem import FileBlobStore
from controller.registry.blobstore.s3 import S3BlobStore
from controller.registry.prune import prune
from controller.registry.registry import Registry, VariantSpec
from controller.store.db import Store
from controller.store.tables import Device, ModelVersionRow, RolloutTarget, VariantRow
from shared.errors import Unavailable
from shared.manifest import load_or_create_signing_key, sha256_file
from tests.integration.install.conftest import model_files


def _spec(root: Path, tag: str, weights: bytes) -> VariantSpec:
    folder = root / tag
    (folder / "sub").mkdir(parents=True)
    (folder / "genai_config.json").write_text(json.dumps({"model": "m"}))
    (folder / "tokenizer.json").write_text("{}" * 50)
    (folder / "sub" / "model.onnx.data").write_bytes(weights)
    return VariantSpec("cpu-int4", "int4", "cpu", folder, metrics={"accuracy": 0.9})


def _registry(store_db: Store, blobs: BlobStore, tmp_path: Path) -> Registry:
    return Registry(store_db, blobs, load_or_create_signing_key(tmp_path / "keys" / "manifest.pem"))


def _rows(db: Store) -> tuple[list, list]:
    with db.session() as s:
        return list(s.exec(select(ModelVersionRow)).all()), list(s.exec(select(VariantRow)).all())


def test_publish_to_s3_then_verify_and_materialize(sqlite_store: Store, s3_store: S3BlobStore, tmp_path: Path):
    registry = _registry(sqlite_store, s3_store, tmp_path)
    weights = os.urandom(200_000)
    version = registry.publish("m", [_spec(tmp_path, "a", weights)], {"recipe": "r"})
    row = registry.variant("m", version, "cpu-int4")
    manifest = registry.verify_variant(row, check_blobs=True)
    assert {f.sha256 for f in manifest.files} <= set(s3_store.iterate())
    out = registry.materialize("m", version, "cpu-int4", tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "model.onnx.data").read_bytes() == weights
    assert all(sha256_file(tmp_path / "out" / f.path) == f.sha256 for f in out.files)


def test_publish_with_the_store_down_leaves_the_registry_unchanged(
    sqlite_store: Store, s3_store: S3BlobStore, tmp_path: Path
):
    registry = _registry(sqlite_store, s3_store, tmp_path)
    registry.publish("m", [_spec(tmp_path, "a", os.urandom(1000))], {})
    before = _rows(sqlite_store)
    import socket

    with socket.socket() as sock:  # a port nobody listens on: the store is down
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = S3BlobStore(s3_store.bucket, endpoint_url=f"http://127.0.0.1:{port}", connect_timeout_s=1, attempts=1)
    registry.blobs = down
    with pytest.raises(Unavailable) as err:
        registry.publish("m", [_spec(tmp_path, "b", os.urandom(1000))], {})
    assert f"127.0.0.1:{port}" in err.value.message and s3_store.bucket in err.value.message
    assert "registry is unchanged" in err.value.message
    after = _rows(sqlite_store)
    assert [(r.name, r.version) for r in after[0]] == [(r.name, r.version) for r in before[0]]
    assert len(after[1]) == len(before[1])
    with pytest.raises(Unavailable, match="bucket"):
        down.check_reachable()


def test_agent_installs_from_the_s3_store(make_agent, publisher, servicer, agent_dir: Path, store: BlobStore):
    """DownloadArtifact served from the S3 store (the fallback for agents without URLs) into a real install."""
    assert isinstance(store, S3BlobStore)
    machine = make_agent()
    data, sig, manifest = publisher.publish("m", "v1", model_files("v1"))
    assert machine.start(data, sig, "rollout-1")
    assert machine.run_to_completion() == State.DONE
    assert servicer.bytes_sent == manifest.total_size
    for f in manifest.files:
        assert sha256_file(agent_dir / "models" / "m" / "v1" / f.path) == f.sha256


@pytest.fixture(params=["file", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "file":
        return FileBlobStore(tmp_path / "artifacts")
    return request.getfixturevalue("s3_store")


def test_prune_keeps_what_devices_need(sqlite_store: Store, blobs: BlobStore, tmp_path: Path):
    registry = _registry(sqlite_store, blobs, tmp_path)
    versions = [registry.publish("m", [_spec(tmp_path, f"v{i}", os.urandom(5000))], {}) for i in range(4)]
    weights = {v: _weights_sha(registry, v) for v in versions}
    stray = blobs.put_bytes(b"left behind by a failed publish").sha256
    with sqlite_store.session() as s:  # a device runs v1; another would roll back to v2
        s.add(Device(agent_id="d1", profile="cpu-int4", installed_name="m", installed_version=versions[0]))
        s.add(RolloutTarget(rollout_id="r1", agent_id="d2", prev_name="m", prev_version=versions[1]))

    dry = prune(sqlite_store, blobs, keep=1, dry_run=True, min_age_s=0)
    assert dry.removed_versions == [f"m:{versions[2]}"]
    assert {r.sha256 for r in dry.removed} == {stray, weights[versions[2]]}
    assert blobs.exists(stray) and len(_rows(sqlite_store)[0]) == 4  # a dry run changes nothing

    fresh = prune(sqlite_store, blobs, keep=1, dry_run=True)  # default min age: a fresh blob may be a publish's
    assert fresh.removed == []

    done = prune(sqlite_store, blobs, keep=1, min_age_s=0)
    assert done.bytes_freed == sum(r.size for r in done.removed) > 0
    assert not blobs.exists(stray) and not blobs.exists(weights[versions[2]])
    for v in (versions[0], versions[1], versions[3]):  # installed, a rollback target, the newest
        assert blobs.exists(weights[v])
        registry.verify_variant(registry.variant("m", v, "cpu-int4"), check_blobs=True)
    assert sorted(r.version for r in _rows(sqlite_store)[0]) == sorted([versions[0], versions[1], versions[3]])
    assert prune(sqlite_store, blobs, min_age_s=0).removed == []  # nothing left to collect


def _weights_sha(registry: Registry, version: str) -> str:
    row = registry.variant("m", version, "cpu-int4")
    manifest = registry.verify_variant(row, check_blobs=False)
    return next(f.sha256 for f in manifest.files if f.path.endswith("model.onnx.data"))


def test_agent_installs_from_presigned_urls_without_controller_bytes(
    make_agent, publisher, servicer, agent_dir: Path, store: BlobStore
):
    """With S3 the agent's HTTP byte path gets presigned GET URLs: the bytes come from the store itself."""
    from agent.install.http_fetch import HttpFetch

    asked: list[str] = []

    def urls(shas):  # type: ignore[no-untyped-def]  # what GetArtifactUrls answers for an S3 store
        asked.extend(shas)
        return [(sha, store.presign_get(sha, 600), int(time.time()) + 600) for sha in shas]

    machine = make_agent(fetch=HttpFetch(urls, lambda: "d1", None))
    data, sig, manifest = publisher.publish("m", "v1", model_files("v1"))
    assert machine.start(data, sig, "rollout-1")
    assert machine.run_to_completion() == State.DONE
    assert servicer.bytes_sent == 0  # the controller carried no artifact bytes
    assert sorted(set(asked)) == sorted({f.sha256 for f in manifest.files})
    for f in manifest.files:
        assert sha256_file(agent_dir / "models" / "m" / "v1" / f.path) == f.sha256
