"""Registry: versions, signed manifests over content-addressed blobs, atomic publish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import select

from controller.registry.blobs import BlobStore
from controller.registry.pb import model_version_to_pb
from controller.registry.registry import Registry, VariantSpec
from controller.registry.versions import next_version, parse_ref, version_key
from controller.store.db import Store
from controller.store.tables import Baseline, ModelVersionRow, VariantRow
from shared.errors import IntegrityError, InvalidArgument, NotFound
from shared.manifest import load_or_create_signing_key, verify


def _variant_folder(root: Path, name: str, payload: bytes) -> Path:
    folder = root / name
    (folder / "sub").mkdir(parents=True)
    (folder / "genai_config.json").write_text(json.dumps({"model": name}))
    (folder / "model.onnx").write_bytes(payload)
    (folder / "sub" / "tokenizer.json").write_text("{}")
    return folder


@pytest.fixture
def registry(sqlite_store: Store, tmp_path: Path) -> Registry:
    key = load_or_create_signing_key(tmp_path / "keys" / "manifest_ed25519.pem")
    return Registry(sqlite_store, BlobStore(tmp_path / "artifacts"), key)


def _specs(tmp_path: Path, tag: str = "a") -> list[VariantSpec]:
    return [
        VariantSpec(
            "cpu-int4",
            "int4",
            "cpu",
            _variant_folder(tmp_path, f"int4-{tag}", b"q4" * 100),
            metrics={"accuracy": 0.9, "latency_ms_mean": 3.0, "role": "variant"},  # type: ignore[dict-item]
            golden=[{"prompt": "p", "expected": "e"}],
        ),
        VariantSpec(
            "cpu-fp32",
            "fp32",
            "cpu",
            _variant_folder(tmp_path, f"fp32-{tag}", b"f32" * 400),
            metrics={"accuracy": 0.91},
        ),
    ]


def test_versions_helpers() -> None:
    assert next_version([]) == "1"
    assert next_version(["1", "2", "10", "x"]) == "11"
    assert sorted(["10", "9", "v11"], key=version_key) == ["9", "10", "v11"]
    assert parse_ref("demo:3") == ("demo", "3")
    assert parse_ref("demo") == ("demo", "")
    with pytest.raises(InvalidArgument):
        parse_ref("Bad Name:1")


def test_publish_and_read_back(registry: Registry, tmp_path: Path) -> None:
    v1 = registry.publish("demo", _specs(tmp_path, "a"), {"teacher": "t", "recipe_hash": "r"}, job_id="j1")
    v2 = registry.publish("demo", _specs(tmp_path, "b"), {"parent_version": v1}, job_id="j2")
    assert (v1, v2) == ("1", "2")
    assert [m.version for m in registry.list_models("demo")] == ["2", "1"]
    latest = registry.latest("demo")
    assert latest.version == "2" and latest.lineage == {"parent_version": "1"} and latest.job_id == "j2"
    assert latest.profiles == ["cpu-fp32", "cpu-int4"]
    row = registry.variant("demo", "1", "cpu-int4")
    manifest = registry.verify_variant(row)
    assert manifest.ref == "demo:1" and manifest.precision == "int4"
    assert manifest.golden == [{"prompt": "p", "expected": "e"}]
    assert manifest.metrics == {"accuracy": 0.9, "latency_ms_mean": 3.0}  # non-numeric metrics dropped
    assert {f.path for f in manifest.files} == {"genai_config.json", "model.onnx", "sub/tokenizer.json"}
    for entry in manifest.files:  # every file is in the blob store under its hash
        assert registry.blobs.path(entry.sha256).read_bytes() == (tmp_path / "int4-a" / entry.path).read_bytes()
    assert row.size_bytes == manifest.total_size
    pb = model_version_to_pb(registry.get_model("demo", "1"))
    assert pb.ref.version == "1" and {v.profile for v in pb.variants} == {"cpu-int4", "cpu-fp32"}
    assert pb.variants[0].manifest.signature
    with registry.store.session() as s:
        baselines = s.exec(select(Baseline).where(Baseline.model_name == "demo")).all()
    assert {(b.profile, b.model_version) for b in baselines} == {
        ("cpu-int4", "1"),
        ("cpu-fp32", "1"),
        ("cpu-int4", "2"),
        ("cpu-fp32", "2"),
    }


def test_not_found_messages(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no published versions"):
        registry.latest("demo")
    registry.publish("demo", _specs(tmp_path), {})
    with pytest.raises(NotFound, match=r"versions of 'demo': 1"):
        registry.get_model("demo", "7")
    with pytest.raises(NotFound, match=r"available: cpu-fp32, cpu-int4"):
        registry.variant("demo", "1", "cuda-fp16")


def test_tampered_manifest_fails_verification(registry: Registry, tmp_path: Path) -> None:
    registry.publish("demo", _specs(tmp_path), {})
    row = registry.variant("demo", "1", "cpu-int4")
    data = json.loads(row.manifest_json)
    data["precision"] = "fp32"
    tampered = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(IntegrityError, match="signature"):
        verify(tampered, row.signature, registry.public_key_pem)
    row.manifest_json = tampered
    with pytest.raises(IntegrityError):
        registry.verify_variant(row)
    # A blob changed on disk is caught too.
    good = registry.variant("demo", "1", "cpu-int4")
    entry = next(
        f for f in verify(good.manifest_json, good.signature, registry.public_key_pem).files if f.path == "model.onnx"
    )
    blob = registry.blobs.path(entry.sha256)
    blob.chmod(0o644)
    blob.write_bytes(b"evil" * 50)
    with pytest.raises(IntegrityError, match=r"model\.onnx"):
        registry.verify_variant(good)


def test_materialize_writes_the_checked_variant(registry: Registry, tmp_path: Path) -> None:
    specs = _specs(tmp_path)
    registry.publish("demo", specs, {})
    out = tmp_path / "out"
    manifest = registry.materialize("demo", "1", "cpu-int4", out)
    assert sorted(f.path for f in manifest.files) == ["genai_config.json", "model.onnx", "sub/tokenizer.json"]
    for f in manifest.files:
        assert (out / f.path).read_bytes() == (specs[0].folder / f.path).read_bytes()
    with pytest.raises(NotFound, match="no variant for profile 'cuda-fp16'"):
        registry.materialize("demo", "1", "cuda-fp16", tmp_path / "none")
    # a damaged blob is refused, not handed to an evaluation
    blob = registry.blobs.path(next(f.sha256 for f in manifest.files if f.path == "model.onnx"))
    blob.chmod(0o644)
    blob.write_bytes(b"evil" * 50)
    with pytest.raises(IntegrityError, match=r"model\.onnx"):
        registry.materialize("demo", "1", "cpu-int4", tmp_path / "again")


def test_failed_publish_leaves_registry_unchanged(registry: Registry, tmp_path: Path) -> None:
    registry.publish("demo", _specs(tmp_path, "a"), {})
    specs = _specs(tmp_path, "b")
    specs.append(VariantSpec("cpu-int8", "int8", "cpu", tmp_path / "missing"))
    with pytest.raises(NotFound, match="cpu-int8"):
        registry.publish("demo", specs, {})
    dup = _specs(tmp_path, "c")
    dup[1].profile = "cpu-int4"
    with pytest.raises(InvalidArgument, match="twice"):
        registry.publish("demo", dup, {})
    with registry.store.session() as s:
        assert [r.version for r in s.exec(select(ModelVersionRow)).all()] == ["1"]
        assert len(s.exec(select(VariantRow)).all()) == 2
    assert registry.latest("demo").version == "1"


def test_error_inside_the_transaction_rolls_back(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import controller.registry.registry as reg_mod

    calls = []
    real_sign = reg_mod.sign

    def failing_sign(data: bytes, key: object) -> bytes:
        calls.append(1)
        if len(calls) == 2:  # the second variant: the version row and first variant are already added
            raise RuntimeError("disk full")
        return real_sign(data, key)  # type: ignore[arg-type]

    monkeypatch.setattr(reg_mod, "sign", failing_sign)
    with pytest.raises(RuntimeError, match="disk full"):
        registry.publish("demo", _specs(tmp_path), {})
    assert registry.list_models() == []
    with registry.store.session() as s:
        assert s.exec(select(VariantRow)).all() == [] and s.exec(select(Baseline)).all() == []


def test_publish_registers_blobs_already_in_the_store_without_reading_a_folder(
    registry: Registry, tmp_path: Path
) -> None:
    """A variant built on a Ray worker: its files are blobs the worker stored; the job worker has no folder."""
    from shared.manifest import FileEntry

    built = _variant_folder(tmp_path / "worker", "int4", b"q4" * 100)
    entries = registry.blobs.put_folder(built)
    gone = tmp_path / "controller" / "jobs" / "j1" / "04-quantize" / "model"  # only an index exists there
    spec = VariantSpec("cpu-int4", "int4", "cpu", gone, stored_files=entries)
    version = registry.publish("remote", [spec], {"teacher": "t"})
    out = tmp_path / "installed"
    manifest = registry.materialize("remote", version, "cpu-int4", out)
    assert [f.path for f in manifest.files] == ["genai_config.json", "model.onnx", "sub/tokenizer.json"]
    assert (out / "model.onnx").read_bytes() == b"q4" * 100
    assert registry.signed_files("remote", version, "cpu-int4").files == manifest.files

    missing = FileEntry("model.onnx", "ab" * 32, 10)
    with pytest.raises(NotFound, match=r"cpu-int4/model\.onnx \(blob abababababab…\) is not in the blob store"):
        registry.publish("remote", [VariantSpec("cpu-int4", "int4", "cpu", gone, stored_files=[missing])], {})
    wrong = FileEntry("model.onnx", entries[1].sha256, entries[1].size + 1)
    with pytest.raises(IntegrityError, match="bytes in the blob store"):
        registry.publish("remote", [VariantSpec("cpu-int4", "int4", "cpu", gone, stored_files=[wrong])], {})
    assert [v.version for v in registry.list_models("remote")] == [version]  # nothing else was published


def test_prune_keeps_blobs_the_stage_cache_names(registry: Registry, tmp_path: Path) -> None:
    from controller.registry.prune import prune

    cached = registry.blobs.put_bytes(b"built on a ray worker")
    other = registry.blobs.put_bytes(b"nobody needs this")
    result = prune(registry.store, registry.blobs, min_age_s=0, also_keep={cached.sha256})
    assert [r.sha256 for r in result.removed] == [other.sha256]
    assert registry.blobs.exists(cached.sha256) and not registry.blobs.exists(other.sha256)
