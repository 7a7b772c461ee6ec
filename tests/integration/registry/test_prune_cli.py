"""`slmops models prune` against a real controller (filesystem blob store): the dry run lists, the real run
removes, and a version a device runs is kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from controller.api.server import ControllerServer
from controller.cli.main import build_parser, run
from controller.registry.registry import VariantSpec
from controller.store.tables import Device


def _publish(server: ControllerServer, folder: Path) -> tuple[str, str]:
    (folder / "sub").mkdir(parents=True)
    (folder / "model.onnx.data").write_bytes(os.urandom(50_000))
    (folder / "sub" / "genai_config.json").write_bytes(b"{}")
    registry = server.app.registry
    version = registry.publish("m", [VariantSpec("cpu-int4", "int4", "cpu", folder)], {})
    manifest = registry.verify_variant(registry.variant("m", version, "cpu-int4"), check_blobs=False)
    return version, next(f.sha256 for f in manifest.files if f.path == "model.onnx.data")


def _cli(server: ControllerServer, *argv: str) -> int:
    tls = server.app.tls
    assert tls is not None
    flags = ["--controller", server.address, "--token", server.app.admin_token, "--ca-cert", str(tls.ca_path)]
    return run(build_parser().parse_args(["models", "prune", *argv, *flags]))


def test_prune_cli(controller: ControllerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blobs = controller.app.blobs
    (v1, w1), (v2, w2), (v3, w3) = (_publish(controller, tmp_path / f"v{i}") for i in range(3))
    stray = blobs.put_bytes(b"an upload whose publish failed").sha256
    with controller.app.store.session() as s:
        s.add(Device(agent_id="d1", profile="cpu-int4", installed_name="m", installed_version=v1))
    time.sleep(1.2)  # older than --min-age 1

    assert _cli(controller, "--keep", "1", "--dry-run", "--min-age", "1") == 0
    out = capsys.readouterr().out
    assert f"would remove version m:{v2}" in out and stray in out and w2 in out
    assert blobs.exists(stray) and blobs.exists(w2)

    assert _cli(controller, "--keep", "1", "--min-age", "1") == 0
    assert f"removed version m:{v2}" in capsys.readouterr().out
    assert not blobs.exists(stray) and not blobs.exists(w2)
    assert blobs.exists(w1) and blobs.exists(w3)  # a device runs v1; v3 is the newest
    assert [v.version for v in controller.app.registry.list_models("m")] == [v3, v1]
