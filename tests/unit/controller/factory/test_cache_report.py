"""Cache keys and fingerprints; the seed report's figures and rendering."""

from __future__ import annotations

import json
from pathlib import Path

from controller.factory.cache import Fingerprints, StageCache, config_paths
from controller.factory.report import build_report, render_table


def test_cache_key_changes_with_each_part() -> None:
    base = StageCache.key("quantize", "1", {"precision": "int4"}, ["convert:abc"], {})
    assert base == StageCache.key("quantize", "1", {"precision": "int4"}, ["convert:abc"], {})
    assert base != StageCache.key("quantize", "2", {"precision": "int4"}, ["convert:abc"], {})
    assert base != StageCache.key("quantize", "1", {"precision": "int8"}, ["convert:abc"], {})
    assert base != StageCache.key("quantize", "1", {"precision": "int4"}, ["convert:abd"], {})
    assert base != StageCache.key("quantize", "1", {"precision": "int4"}, ["convert:abc"], {"/x": "1"})


def test_fingerprints_follow_content_and_memo(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"one")
    fp = Fingerprints(tmp_path / "memo.json")
    first = fp.folder(folder)
    fp.save()
    assert json.loads((tmp_path / "memo.json").read_text())  # memo written
    assert Fingerprints(tmp_path / "memo.json").folder(folder) == first
    (folder / "a.bin").write_bytes(b"two")
    assert Fingerprints(tmp_path / "memo.json").folder(folder) != first
    cfg = {"model": str(folder), "nested": [{"data": str(folder / "a.bin")}], "name": "x", "rel": "a.bin"}
    assert config_paths(cfg) == [str(folder), str(folder / "a.bin")]


def test_cache_put_get_and_concurrent_put(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "cache")
    for attempt in ("w1", "w2"):
        work = tmp_path / attempt
        (work / "model").mkdir(parents=True)
        (work / "model" / "f").write_text(attempt)
        entry = cache.put("k1", work, {"model": work / "model"}, {"m": 1}, "digest")
        # the second put finds the first one's entry and discards its own work dir
        assert entry.outputs["model"] == tmp_path / "cache" / "k1" / "model"
        assert (entry.outputs["model"] / "f").read_text() == "w1"
        assert not work.exists()
    got = cache.get("k1")
    assert got is not None and got.metrics == {"m": 1} and got.digest == "digest"
    (got.outputs["model"] / "f").unlink()
    (got.outputs["model"]).rmdir()
    assert cache.get("k1") is None  # an entry that lost an output is a miss


def _ev(role: str, label: str, precision: str, acc: float, lat: float, foot: float, weights: float) -> dict:
    return {
        "role": role,
        "label": label,
        "profile": label if role == "variant" else "",
        "precision": precision,
        "accuracy": acc,
        "json_validity": 1.0,
        "latency_ms_mean": lat,
        "ttft_ms_mean": lat / 5,
        "tokens_per_s": 100.0,
        "footprint_bytes": foot,
        "weights_bytes": weights,
        "peak_rss_bytes": 5e7,
    }


def test_report_figures() -> None:
    evals = [
        _ev("teacher", "teacher", "fp32", 1.0, 20.0, 20e6, 19e6),
        _ev("reference", "student-fp32", "fp32", 0.97, 4.0, 3e6, 2.8e6),
        _ev("variant", "cpu-int4", "int4", 0.96, 2.0, 0.9e6, 0.6e6),
        _ev("variant", "cpu-fp32", "fp32", 0.97, 4.0, 3e6, 2.8e6),
        {"role": "variant", "label": "cuda-fp16", "profile": "cuda-fp16", "skipped": True, "reason": "no CUDA"},
    ]
    rep = build_report(evals)
    f = rep["figures"]
    assert rep["deployed"] == "cpu-int4" and rep["fp32"] == "student-fp32"
    assert abs(f["accuracy_retention"] - 0.96) < 1e-9
    assert abs(f["latency_reduction"] - 0.9) < 1e-9
    assert abs(f["memory_reduction"] - 0.955) < 1e-9
    assert abs(f["int4_size_reduction"] - (1 - 0.6 / 2.8)) < 1e-9
    assert abs(f["int4_accuracy_change_pts"] - (-1.0)) < 1e-9
    assert rep["meets_targets"] == {
        "accuracy_retention": True,
        "latency_reduction": True,
        "memory_reduction": True,
        "int4_size_reduction": True,
        "int4_accuracy_change_pts": True,
    }
    text = render_table(rep)
    assert "cpu-int4" in text and "cuda-fp16: not evaluated: no CUDA" in text and "96.0%" in text
    json.dumps(rep)  # JSON-able


def test_report_without_teacher_has_no_teacher_figures() -> None:
    rep = build_report([_ev("variant", "cpu-int4", "int4", 0.5, 2.0, 1e6, 1e6)])
    assert rep["figures"]["accuracy_retention"] is None and rep["meets_targets"]["accuracy_retention"] is None
    assert "-" in render_table(rep)
