"""The agent's data directory: pointers, safe paths, local copies, pruning."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent.install.layout import Layout, check_file_path, check_ref, link_or_copy
from agent.install.states import ModelRef
from shared.errors import IntegrityError, InvalidArgument
from shared.manifest import FileEntry, Manifest, hash_folder


def installed(layout: Layout, name: str, version: str, files: dict[str, bytes]) -> Manifest:
    folder = layout.version_dir(ModelRef(name, version))
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    manifest = Manifest(name, version, "p", "int4", "cpu", hash_folder(folder))
    layout.write_sidecar(folder, manifest.to_json(), b"sig")
    return manifest


def test_pointers_round_trip_and_clear(tmp_path: Path):
    layout = Layout(tmp_path)
    assert layout.read_pointer("current") is None
    layout.write_pointer("current", ModelRef("m", "v1"))
    assert layout.read_pointer("current") == ModelRef("m", "v1")
    assert layout.current_dir() == tmp_path / "models" / "m" / "v1"
    layout.write_pointer("current", None)
    assert layout.read_pointer("current") is None
    with pytest.raises(InvalidArgument):
        layout.read_pointer("other")


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", ".slmops/manifest.json", "a\\b", ""])
def test_unsafe_manifest_paths_are_refused(bad):
    with pytest.raises(IntegrityError):
        check_file_path(bad)


@pytest.mark.parametrize("bad", [ModelRef("..", "v1"), ModelRef("m", "a/b"), ModelRef("m", ".hidden")])
def test_unsafe_refs_are_refused(bad):
    with pytest.raises(InvalidArgument):
        check_ref(bad)


def test_local_copy_finds_installed_files(tmp_path: Path):
    layout = Layout(tmp_path)
    m = installed(layout, "m", "v1", {"tok.json": b"tokenizer", "w.bin": b"weights1"})
    tok = next(f for f in m.files if f.path == "tok.json")
    assert layout.local_copy(tok) == layout.version_dir(ModelRef("m", "v1")) / "tok.json"
    assert layout.local_copy(tok, exclude={tok.sha256}) is None
    assert layout.local_copy(FileEntry("x", tok.sha256, tok.size + 1)) is None
    assert layout.is_complete(ModelRef("m", "v1"))
    (layout.version_dir(ModelRef("m", "v1")) / "w.bin").write_bytes(b"short")
    assert not layout.is_complete(ModelRef("m", "v1"))


def test_prune_keeps_newest_and_protected(tmp_path: Path):
    layout = Layout(tmp_path)
    for i in range(1, 5):
        installed(layout, "m", f"v{i}", {"w": f"{i}".encode()})
        side = layout.version_dir(ModelRef("m", f"v{i}")) / ".slmops" / "manifest.json"
        os.utime(side, (time.time() - 100 + i, time.time() - 100 + i))
    removed = layout.prune(keep=2, protect={ModelRef("m", "v1")})
    assert sorted(map(str, removed)) == ["m:v2", "m:v3"]
    assert sorted(p.name for p in (tmp_path / "models" / "m").iterdir()) == ["v1", "v4"]


def test_link_or_copy(tmp_path: Path):
    src = tmp_path / "a"
    src.write_bytes(b"data")
    dest = tmp_path / "d" / "b"
    link_or_copy(src, dest)
    assert dest.read_bytes() == b"data" and os.stat(dest).st_ino == os.stat(src).st_ino
