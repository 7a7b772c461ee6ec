"""Stage ``registry-variant``: the version a retrain compares with, as files here or as an index for Ray workers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from controller.factory.backends import packed
from controller.factory.stage import StageContext, get_stage
from controller.registry.blobs import BlobStore
from controller.registry.registry import Registry, VariantSpec
from controller.store.db import Store
from shared.errors import StageError
from shared.manifest import load_or_create_signing_key


@pytest.fixture
def registry(sqlite_store: Store, tmp_path: Path) -> Registry:
    key = load_or_create_signing_key(tmp_path / "keys" / "manifest_ed25519.pem")
    registry = Registry(sqlite_store, BlobStore(tmp_path / "artifacts"), key)
    folder = tmp_path / "built"
    folder.mkdir()
    (folder / "genai_config.json").write_text("{}")
    (folder / "model.onnx").write_bytes(b"w" * 2048)
    registry.publish("demo", [VariantSpec("cpu-int4", "int4", "cpu", folder)], {})
    return registry


def _run(registry: Registry, work: Path, runner: object, version: str = "1") -> Path:
    stage = get_stage("registry-variant")
    config = stage.parse_config({"name": "demo", "version": version, "profile": "cpu-int4"}, "test")
    work.mkdir(parents=True)
    ctx = StageContext(work, {}, extras={"registry": registry, "task_runner": runner})
    return stage.run(config, ctx).outputs["model"]


def test_the_variant_is_written_here_for_local_steps(registry: Registry, tmp_path: Path) -> None:
    model = _run(registry, tmp_path / "local", SimpleNamespace(outputs_in_store=False))
    assert (model / "model.onnx").read_bytes() == b"w" * 2048 and not packed.is_remote(model)


def test_steps_on_ray_workers_get_an_index_of_the_signed_blobs(registry: Registry, tmp_path: Path) -> None:
    model = _run(registry, tmp_path / "ray", SimpleNamespace(outputs_in_store=True))
    assert sorted(p.name for p in model.iterdir()) == [packed.INDEX]  # no byte of the model came here
    manifest = registry.signed_files("demo", "1", "cpu-int4")
    assert sorted(packed.entries(model) or []) == sorted((f.path, f.sha256, f.size) for f in manifest.files)
    assert packed.read_bytes(model / "model.onnx", registry.blobs) == b"w" * 2048

    with pytest.raises(StageError, match="cannot compare with demo:7/cpu-int4"):
        _run(registry, tmp_path / "missing", SimpleNamespace(outputs_in_store=True), version="7")
