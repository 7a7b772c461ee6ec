"""`slmops models verify` against a real controller: every blob the signed manifests reference is re-hashed;
corrupt and missing ones are listed (exit status 1), nothing when the registry is intact (exit status 0)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from controller.api.server import ControllerServer
from controller.cli.main import build_parser, run
from controller.registry.registry import VariantSpec
from shared.pb import admin_pb2
from tests.fixtures.controller import admin


def _publish(server: ControllerServer, tmp_path: Path) -> tuple[str, dict[str, str]]:
    folders = {}
    for profile in ("cpu-int4", "cpu-fp32"):
        folder = tmp_path / profile
        (folder / "sub").mkdir(parents=True)
        (folder / "model.onnx.data").write_bytes(os.urandom(200_000))
        (folder / "tokenizer.json").write_bytes(b'{"shared": true}' * 100)  # the same blob in both variants
        (folder / "sub" / "genai_config.json").write_bytes(profile.encode())
        folders[profile] = folder
    variants = [VariantSpec(p, p.split("-")[1], "cpu", f) for p, f in folders.items()]
    version = server.app.registry.publish("m", variants, {"source": "test"})
    shas = {}
    for v in server.app.registry.get_model("m", version).variants:
        for f in server.app.registry.verify_variant(v, check_blobs=False).files:
            shas[f"{v.profile} {f.path}"] = f.sha256
    return version, shas


def _replace(path: Path, data: bytes) -> None:
    """Write a blob's new content as a new file (the blob may be a hard link to a build folder)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _cli(server: ControllerServer, *argv: str) -> int:
    tls = server.app.tls
    assert tls is not None
    flags = ["--controller", server.address, "--token", server.app.admin_token, "--ca-cert", str(tls.ca_path)]
    return run(build_parser().parse_args(["models", "verify", *argv, *flags]))


def test_verify_lists_corrupt_and_missing_blobs_and_nothing_when_intact(
    controller: ControllerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version, shas = _publish(controller, tmp_path)
    conn = admin(controller)
    intact = conn("VerifyModels", admin_pb2.VerifyModelsRequest())
    assert list(intact.problems) == []  # type: ignore[attr-defined]
    assert intact.variants_checked == 2 and intact.blobs_checked == 5  # type: ignore[attr-defined]
    assert _cli(controller) == 0 and _cli(controller, f"m:{version}") == 0

    blobs = controller.app.blobs
    weights = blobs.blob_path(shas["cpu-int4 model.onnx.data"])
    good = weights.read_bytes()
    _replace(weights, bytes([good[0] ^ 1]) + good[1:])  # same size, one bit off
    shared = blobs.blob_path(shas["cpu-fp32 tokenizer.json"])
    shared_bytes = shared.read_bytes()
    shared.unlink()
    result = conn("VerifyModels", admin_pb2.VerifyModelsRequest(name="m", version=version))
    found = {p.kind: p for p in result.problems}  # type: ignore[attr-defined]
    assert sorted(found) == ["corrupt", "missing"]
    assert found["corrupt"].sha256 == shas["cpu-int4 model.onnx.data"]
    assert list(found["corrupt"].used_by) == [f"m:{version}/cpu-int4 model.onnx.data"]
    assert sorted(found["missing"].used_by) == [
        f"m:{version}/cpu-fp32 tokenizer.json",
        f"m:{version}/cpu-int4 tokenizer.json",
    ]
    capsys.readouterr()
    assert _cli(controller, "m") == 1
    out = capsys.readouterr().out
    assert "corrupt" in out and "missing" in out and shas["cpu-int4 model.onnx.data"][:16] in out

    _replace(weights, good)
    _replace(shared, shared_bytes)
    assert list(conn("VerifyModels", admin_pb2.VerifyModelsRequest()).problems) == []  # type: ignore[attr-defined]
    assert _cli(controller) == 0


def test_verify_of_an_unknown_model_is_not_found(controller: ControllerServer) -> None:
    with pytest.raises(grpc.RpcError) as info:
        admin(controller)("VerifyModels", admin_pb2.VerifyModelsRequest(name="nope", version="3"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert "nope:3" in info.value.details()  # type: ignore[attr-defined]
