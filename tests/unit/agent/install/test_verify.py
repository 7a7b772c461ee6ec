"""Verifying an installed version against its signed manifest, and when the periodic scrub is due."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.install.integrity import ScrubSchedule, verify_version
from agent.install.layout import Layout
from agent.install.states import ModelRef
from shared.errors import Cancelled
from shared.manifest import Manifest, hash_folder, public_pem, sign

REF = ModelRef("m", "v1")
FILES = {"model.onnx": b"graph" * 100, "model.onnx.data": os.urandom(50_000), "sub/tokenizer.json": b"{}" * 10}


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def layout(tmp_path: Path, key: Ed25519PrivateKey) -> Layout:
    """A layout with REF installed: its files and a sidecar signed with ``key``."""
    layout = Layout(tmp_path)
    folder = layout.version_dir(REF)
    for rel, data in FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    manifest = Manifest("m", "v1", "cpu-int4", "int4", "cpu", hash_folder(folder)).to_json()
    layout.write_sidecar(folder, manifest, sign(manifest, key))
    return layout


def check(layout: Layout, key: Ed25519PrivateKey):
    return verify_version(layout, REF, public_pem(key))


def flip(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_intact_version_passes_and_hashes_every_byte(layout: Layout, key: Ed25519PrivateKey) -> None:
    result = check(layout, key)
    assert result.ok and result.damaged == []
    assert result.checked_bytes == sum(len(d) for d in FILES.values())
    assert result.manifest is not None and result.manifest.ref == "m:v1"
    assert "3 files" in result.summary()


def test_same_size_different_bytes_fails_the_sha256(layout: Layout, key: Ed25519PrivateKey) -> None:
    path = layout.version_dir(REF) / "model.onnx.data"
    stat = path.stat()
    flip(path, 25_000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # bit rot keeps size and mtime
    result = check(layout, key)
    assert not result.ok
    assert [d.path for d in result.damaged] == ["model.onnx.data"]
    assert "sha256" in result.damaged[0].problem
    assert result.damaged[0].sha256 == next(f.sha256 for f in result.manifest.files if f.path == "model.onnx.data")
    assert "model.onnx.data" in result.describe()


def test_size_mismatch_and_missing_file_are_named(layout: Layout, key: Ed25519PrivateKey) -> None:
    folder = layout.version_dir(REF)
    with open(folder / "model.onnx", "ab") as fh:
        fh.write(b"x")
    (folder / "sub" / "tokenizer.json").unlink()
    result = check(layout, key)
    problems = {d.path: d.problem for d in result.damaged}
    assert set(problems) == {"model.onnx", "sub/tokenizer.json"}
    assert "size" in problems["model.onnx"] and "missing" in problems["sub/tokenizer.json"]


def test_manifest_not_signed_by_the_pinned_key_is_damage(layout: Layout) -> None:
    result = verify_version(layout, REF, public_pem(Ed25519PrivateKey.generate()))
    assert not result.ok and result.manifest is None
    assert [d.path for d in result.damaged] == [".slmops/manifest.json"]
    assert "signature" in result.damaged[0].problem


def test_missing_sidecar_is_damage(layout: Layout, key: Ed25519PrivateKey) -> None:
    (layout.version_dir(REF) / ".slmops" / "manifest.sig").unlink()
    result = check(layout, key)
    assert not result.ok and result.manifest is None and "manifest" in result.describe()


def test_manifest_of_another_version_is_damage(layout: Layout, key: Ed25519PrivateKey) -> None:
    """A sidecar copied from another version is signed, but it does not describe this folder."""
    other = Manifest("m", "v9", "cpu-int4", "int4", "cpu", hash_folder(layout.version_dir(REF))).to_json()
    layout.write_sidecar(layout.version_dir(REF), other, sign(other, key))
    result = check(layout, key)
    assert not result.ok and "m:v9" in result.describe()


def test_cancel_stops_a_long_verification(layout: Layout, key: Ed25519PrivateKey) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        verify_version(layout, REF, public_pem(key), cancel=cancel)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_scrub_schedule_counts_from_the_last_full_check() -> None:
    clock = Clock()
    schedule = ScrubSchedule(3600.0, clock)
    assert schedule.seconds_left() == 3600.0  # the check at start is the first full check
    clock.now += 3000
    assert schedule.seconds_left() == pytest.approx(600.0)
    clock.now += 700
    assert schedule.seconds_left() == 0.0
    schedule.done()
    assert schedule.seconds_left() == 3600.0


def test_scrub_schedule_off() -> None:
    assert ScrubSchedule(0.0).seconds_left() is None


# --- the periodic health check's golden prompts (agent/health.py; same issue: a half-broken model) -----------
def test_golden_window_rotates_through_every_prompt() -> None:
    from agent.health import golden_window

    golden = [{"prompt": str(i), "expected": str(i)} for i in range(10)]
    seen = [g["prompt"] for turn in range(5) for g in golden_window(golden, 4, turn)]
    assert seen[:4] == ["0", "1", "2", "3"] and seen[8:12] == ["8", "9", "0", "1"]
    assert set(seen) == {str(i) for i in range(10)}
    assert golden_window(golden, 0, 3) == golden and golden_window(golden[:3], 4, 7) == golden[:3]
