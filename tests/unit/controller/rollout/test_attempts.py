"""Rollout attempts: each assignment of a device is a new try (DesiredModel.attempt), so a resumed wave is one
the agent installs; an agent's refusal of the current attempt fails the device at once; agents' sha256
failures name the controller's blob in the pause message, and a resume re-checks it first."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from controller.registry.blobs import BlobStore
from controller.rollout import RolloutSpec, create_rollout, desired_for, get_rollout, on_install_report, resume, tick
from controller.rollout.pb import desired_to_pb
from controller.rollout.spec import DesiredModelInfo
from controller.store.db import Store
from controller.store.tables import BlobProblem, ModelVersionRow, VariantRow
from shared.errors import FailedPrecondition
from shared.manifest import FileEntry, Manifest

from .fleet import Fleet

T0 = 2_000_000.0
VERIFY_FAILED = ("DOWNLOAD", "VERIFY", "CLEANUP", "FAILED")


def _fail_verify(store: Store, agent_id: str, desired: DesiredModelInfo, message: str, ts: float) -> None:
    prev = "IDLE"
    for state in VERIFY_FAILED:
        on_install_report(
            store,
            agent_id,
            desired.rollout_id,
            desired.model_name,
            desired.model_version,
            prev,
            state,
            event="FAIL" if state == "CLEANUP" else "OK",
            message=message if state in ("CLEANUP", "FAILED") else "",
            ts=ts,
        )
        prev = state


def _refuse(store: Store, agent_id: str, desired: DesiredModelInfo, attempt: int, ts: float) -> str | None:
    """What a current agent reports when it will not repeat a failed attempt (FAILED -> FAILED, REFUSED)."""
    ref = f"{desired.model_name}:{desired.model_version}"
    return on_install_report(
        store,
        agent_id,
        desired.rollout_id,
        desired.model_name,
        desired.model_version,
        "FAILED",
        "FAILED",
        event="REFUSED",
        message=f"{ref} already failed in rollout {desired.rollout_id} (attempt {attempt}): bad; not retrying it",
        ts=ts,
        attempt=attempt,
    )


@pytest.fixture
def fleet(store: Store) -> Fleet:
    f = Fleet(store)
    f.model("m", "1", ["cpu-int4"])
    f.model("m", "2", ["cpu-int4"])
    f.device("a0", "cpu-int4", installed="m:1")
    return f


def _target(store: Store, rid: str, agent_id: str = "a0"):  # type: ignore[no-untyped-def]
    return next(t for t in get_rollout(store, rid).targets if t.agent_id == agent_id)


def test_resume_after_a_failed_wave_is_a_new_attempt(store: Store, fleet: Fleet) -> None:
    rid = create_rollout(store, RolloutSpec("m", "2", max_failure=0.0, soak_s=0), now=T0)
    first = desired_for(store, "a0", now=T0)
    assert first is not None and (first.model_version, first.attempt) == ("2", 1)
    assert desired_to_pb(first).attempt == 1  # type: ignore[union-attr]
    _fail_verify(store, "a0", first, "m:2: files failed their sha256 check again", T0 + 1)
    tick(store, now=T0 + 2)
    info = get_rollout(store, rid)
    assert info.state == "PAUSED" and f"`slmops rollout resume {rid}` retries the wave" in info.message
    back = desired_for(store, "a0", now=T0 + 3)  # the device goes back to what it ran
    assert back is not None and back.model_version == "1"

    info = resume(store, rid, now=T0 + 4)
    assert info.state == "ACTIVE" and _target(store, rid).state == "assigned"
    assert _target(store, rid).attempt == 2
    second = desired_for(store, "a0", now=T0 + 5)
    assert second is not None and (second.model_version, second.attempt) == ("2", 2)
    assert desired_to_pb(second).attempt == 2  # type: ignore[union-attr]
    fleet.report("a0", second, ("DOWNLOAD", "VERIFY", "INSTALL", "ACTIVATE", "HEALTH_CHECK", "COMMIT", "DONE"), T0 + 6)
    tick(store, now=T0 + 7)
    assert get_rollout(store, rid).state == "SUCCEEDED"


def test_a_refusal_of_the_current_attempt_fails_the_device_at_once(store: Store, fleet: Fleet) -> None:
    rid = create_rollout(store, RolloutSpec("m", "2", max_failure=0.0, soak_s=0), now=T0)
    desired = desired_for(store, "a0", now=T0)
    assert desired is not None and desired.attempt == 1
    assert _refuse(store, "a0", desired, attempt=0, ts=T0 + 1) == "assigned"  # about another attempt: stale
    assert _refuse(store, "a0", desired, attempt=1, ts=T0 + 1) == "failed"
    target = _target(store, rid)
    assert target.state == "failed" and "not retrying it" in target.message
    tick(store, now=T0 + 2)  # well before the device timeout (900 s)
    assert get_rollout(store, rid).state == "PAUSED"


def _real_model(store: Store, blobs: BlobStore, tmp_path: Path) -> tuple[FileEntry, bytes]:
    """Version 3 of m with real files in a blob store; returns the weights' entry and bytes."""
    folder = tmp_path / "m3"
    folder.mkdir()
    (folder / "model.onnx.data").write_bytes(b"weights " * 5000)
    (folder / "genai_config.json").write_bytes(b"{}")
    files = blobs.put_folder(folder)
    manifest = Manifest("m", "3", "cpu-int4", "int4", "cpu", files)
    with store.session() as s:
        s.add(ModelVersionRow(name="m", version="3", created_at=3.0))
        s.add(VariantRow(name="m", version="3", profile="cpu-int4", manifest_json=manifest.to_json(), signature=b"s"))
    weights = next(f for f in files if f.path == "model.onnx.data")
    return weights, (folder / "model.onnx.data").read_bytes()


def test_sha256_failures_name_the_blob_and_resume_checks_it(store: Store, fleet: Fleet, tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    weights, good = _real_model(store, blobs, tmp_path)
    path = blobs.blob_path(weights.sha256)
    path.write_bytes(b"X" + good[1:])  # the controller's copy is damaged
    rid = create_rollout(store, RolloutSpec("m", "3", max_failure=0.0, soak_s=0), now=T0)
    desired = desired_for(store, "a0", now=T0)
    assert desired is not None
    agent_says = (
        "m:3: files failed their sha256 check again, refusing the version: "
        f"model.onnx.data: sha256 0123456789ab… does not match the manifest ({weights.sha256[:12]}…)"
    )
    _fail_verify(store, "a0", desired, agent_says, T0 + 1)
    with store.session() as s:
        reported = s.get(BlobProblem, weights.sha256)
        assert reported is not None and reported.kind == "reported" and "model.onnx.data" in reported.used_by
    tick(store, now=T0 + 2)
    info = get_rollout(store, rid)
    assert info.state == "PAUSED"
    assert weights.sha256[:12] in info.message and "model.onnx.data" in info.message
    assert "slmops models verify m:3" in info.message

    with pytest.raises(FailedPrecondition, match=weights.sha256[:12]) as refused:
        resume(store, rid, now=T0 + 3, blobs=blobs)  # still corrupt: retrying would fail the same way
    assert "slmops models verify m:3" in refused.value.message
    assert get_rollout(store, rid).state == "PAUSED"
    with store.session() as s:
        assert s.get(BlobProblem, weights.sha256).kind == "corrupt"  # type: ignore[union-attr]

    path.write_bytes(good)  # the operator restores it
    info = resume(store, rid, now=T0 + 4, blobs=blobs)
    assert info.state == "ACTIVE"
    with store.session() as s:
        assert s.get(BlobProblem, weights.sha256) is None  # intact again: forgotten
    again = desired_for(store, "a0", now=T0 + 5)
    assert again is not None and again.attempt == 2


def test_failures_that_name_no_file_record_nothing(store: Store, fleet: Fleet) -> None:
    create_rollout(store, RolloutSpec("m", "2", max_failure=0.0, soak_s=0), now=T0)
    desired = desired_for(store, "a0", now=T0)
    assert desired is not None
    _fail_verify(store, "a0", desired, "health check failed: golden prompt 1", T0 + 1)  # fake manifest, no files
    with store.session() as s:
        assert s.exec(select(BlobProblem)).all() == []
