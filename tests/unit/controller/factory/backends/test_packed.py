"""Stage outputs that live only in the blob store: the controller's folder holds their index (packed.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from controller.factory.backends import packed
from controller.factory.backends.transfer import Packed, localize, pack, unlocalize
from controller.factory.cache import Fingerprints, StageCache, output_digest
from controller.registry.blobstore import FileBlobStore
from shared.errors import NotFound


def _model(root: Path) -> Path:
    (root / "model" / "sub").mkdir(parents=True)
    (root / "model" / "genai_config.json").write_text('{"model": {}}')
    (root / "model" / "sub" / "weights.bin").write_bytes(b"\x01" * 4096)
    (root / "model-a").mkdir()  # sorts differently as a path than as a string: the digests must still agree
    (root / "model-a" / "x.txt").write_text("x")
    (root / "metrics.json").write_text('{"accuracy": 0.5}')
    return root


def test_an_indexed_folder_answers_like_the_files_it_replaced(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "artifacts")
    node = _model(tmp_path / "node" / "03-convert")
    fp = Fingerprints()
    on_disk = {
        "model": fp.path(node / "model"),
        "metrics": fp.path(node / "metrics.json"),
        "all": fp.path(node),
        "a": fp.path(node / "model-a"),
    }
    disk_digest = output_digest({"model": node / "model", "metrics": node / "metrics.json"}, fp)
    stored = pack(blobs, node)
    shutil.rmtree(node)

    here = tmp_path / "controller" / "03-convert"  # the job worker's work dir for the step
    here.mkdir(parents=True)
    packed.write_index(here, stored.files)
    assert sorted(p.name for p in here.iterdir()) == [packed.INDEX]  # no file came back
    assert packed.exists(here / "model") and packed.exists(here / "model" / "sub" / "weights.bin")
    assert not packed.exists(here / "model" / "nope.bin") and not (here / "model").exists()
    assert packed.digest(here / "model", fp) == on_disk["model"]
    assert packed.digest(here / "metrics.json", fp) == on_disk["metrics"]
    assert packed.digest(here, fp) == on_disk["all"] and packed.digest(here / "model-a", fp) == on_disk["a"]
    assert json.loads(packed.read_bytes(here / "metrics.json", blobs)) == {"accuracy": 0.5}
    with packed.open_text(here / "model" / "genai_config.json", blobs) as fh:
        assert json.load(fh) == {"model": {}}
    rows = packed.entries(here / "model")
    assert rows is not None and sorted(r[0] for r in rows) == ["genai_config.json", "sub/weights.bin"]
    assert packed.entries(tmp_path) is None and not packed.is_remote(tmp_path)
    with pytest.raises(NotFound, match="not a file"):
        packed.read_bytes(here / "model", blobs)
    with pytest.raises(NotFound, match="no blob store"):
        packed.read_bytes(here / "metrics.json", None)

    # the runner's digest and the stage cache see the same outputs as on disk
    outputs = {"model": here / "model", "metrics": here / "metrics.json"}
    assert output_digest(outputs, fp) == disk_digest
    cache = StageCache(tmp_path / "cache", blobs)
    entry = cache.put("k1", here, outputs, {"accuracy": 0.5}, "d1")
    assert cache.get("k1") is not None and not (entry.outputs["model"]).exists()
    assert packed.referenced(tmp_path / "cache") == {sha for _r, sha, _s in stored.files}
    weights = next(sha for rel, sha, _s in stored.files if rel.endswith("weights.bin"))
    blobs.delete(weights)
    assert cache.get("k1") is None  # a blob of the entry is gone: a miss, the step runs again


def test_a_remote_pack_is_materialised_even_where_its_index_folder_exists(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "artifacts")
    node = _model(tmp_path / "node" / "03-convert")
    stored = pack(blobs, node)
    shutil.rmtree(node)
    here = tmp_path / "cache" / "k1"
    here.mkdir(parents=True)
    packed.write_index(here, stored.files)
    packs = {str(here): Packed(str(here), stored.files, remote=True)}
    seen: dict[str, str] = {}
    scratch = tmp_path / "task" / "inputs"
    local = Path(localize(str(here), packs, blobs, scratch, seen))  # the folder exists here, but holds an index
    assert local.is_relative_to(scratch) and (local / "model" / "sub" / "weights.bin").read_bytes() == b"\x01" * 4096
    assert not (local / packed.INDEX).exists()
    # an output that passes an input on names the controller-side path, not the task's scratch
    assert unlocalize(str(local / "model"), seen) == str(here / "model")
    assert unlocalize(str(tmp_path / "other"), seen) == str(tmp_path / "other")


def test_a_broken_index_names_itself(tmp_path: Path) -> None:
    (tmp_path / packed.INDEX).write_text("{not json")
    with pytest.raises(NotFound, match=r"\.slmops-packed\.json is not a readable stage output index"):
        packed.exists(tmp_path / "model")
