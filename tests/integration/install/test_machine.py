"""The install state machine in-process against a real gRPC blob server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.install import steps
from agent.install.pb import transition_to_pb
from agent.install.states import Event, State
from agent.install.transfer import DiskSpaceError
from shared.errors import FailedPrecondition, IntegrityError
from shared.manifest import sha256_file
from tests.integration.install.conftest import model_files


def active(agent_dir: Path) -> str:
    return Path((agent_dir / "active.txt").read_text()).name


def install(machine, publisher, version: str, **kw) -> State:
    data, sig, _ = publisher.publish("m", version, model_files(version, **kw))
    assert machine.start(data, sig, "rollout-1")
    return machine.run_to_completion()


def test_install_then_update_moves_only_changed_bytes(make_agent, publisher, servicer, agent_dir):
    machine = make_agent()
    assert install(machine, publisher, "v1") == State.DONE
    v1 = publisher.made["v1"]
    assert servicer.bytes_sent == v1.total_size
    assert machine.current_version() == ("m", "v1")
    assert active(agent_dir) == "v1"
    for f in v1.files:  # every file is in place with its hash
        assert sha256_file(agent_dir / "models" / "m" / "v1" / f.path) == f.sha256
    steps_taken = [(t.from_state, t.to_state) for t in machine.transitions]
    assert [s for _, s in steps_taken] == [
        State.DOWNLOAD, State.VERIFY, State.INSTALL, State.ACTIVATE, State.HEALTH_CHECK, State.COMMIT, State.DONE
    ]  # fmt: skip

    servicer.served.clear()
    assert install(machine, publisher, "v2") == State.DONE
    v2 = publisher.made["v2"]
    old = {f.sha256 for f in v1.files}
    changed = sum(f.size for f in v2.files if f.sha256 not in old)
    assert 0 < changed < v2.total_size
    assert servicer.bytes_sent == changed  # tokenizer, config and health marker were linked, not downloaded
    assert machine.snapshot.record.stats["reused_bytes"] == v2.total_size - changed
    assert machine.current_version() == ("m", "v2")
    assert machine.previous_version() == ("m", "v1")
    assert not list((agent_dir / "downloads").iterdir())


def test_already_current_version_is_a_no_op(make_agent, publisher):
    machine = make_agent()
    data, sig, _ = publisher.publish("m", "v1", model_files("v1"))
    assert machine.start(data, sig) and machine.run_to_completion() == State.DONE
    assert machine.start(data, sig) is False


def test_profile_change_installs_the_other_variant_of_the_same_version(make_agent, publisher, servicer, agent_dir):
    """The device's profile changed while it runs v1: the controller now wants v1's variant for the new profile."""
    machine = make_agent()
    int4, int4_sig, _ = publisher.publish("m", "v1", model_files("v1"), profile="cpu-int4")
    fp32, fp32_sig, fp32_manifest = publisher.publish("m", "v1", model_files("v1"), profile="cpu-fp32")
    assert machine.start(int4, int4_sig, "r1") and machine.run_to_completion() == State.DONE
    assert machine.start(int4, int4_sig, "r1") is False  # the same variant: nothing to do

    assert machine.start(fp32, fp32_sig, "r1") is True
    assert machine.run_to_completion() == State.DONE
    assert active(agent_dir) == "v1+cpu-fp32"  # installed beside the int4 variant, not over it
    folder = agent_dir / "models" / "m" / "v1+cpu-fp32"
    assert all(sha256_file(folder / f.path) == f.sha256 for f in fp32_manifest.files)
    # the controller hears about version v1, as it knows it
    assert machine.current_version() == ("m", "v1") and machine.previous_version() == ("m", "v1")
    assert {(t.model.name, t.model.version) for t in machine.transitions if t.model} == {
        ("m", "v1+cpu-fp32"),
        ("m", "v1"),
    }
    reports = [transition_to_pb(t, "agt-1") for t in machine.transitions if t.model]
    assert {(r.model.name, r.model.version) for r in reports} == {("m", "v1")}
    assert machine.start(fp32, fp32_sig, "r1") is False

    # back to the first profile: its variant is still installed, so it is activated again without a download
    sent = servicer.bytes_sent
    assert machine.start(int4, int4_sig, "r1") is True
    assert machine.run_to_completion() == State.DONE
    assert active(agent_dir) == "v1"
    assert servicer.bytes_sent == sent


def test_health_check_failure_rolls_back_to_previous(make_agent, publisher, agent_dir):
    machine = make_agent()
    assert install(machine, publisher, "v1") == State.DONE
    assert install(machine, publisher, "v2", healthy=False) == State.FAILED
    assert machine.current_version() == ("m", "v1")
    assert active(agent_dir) == "v1"  # the previous model was activated again
    assert "health check of m:v2 failed" in machine.snapshot.message
    assert not (agent_dir / "models" / "m" / "v2").exists()
    path = [t.to_state for t in machine.transitions][-4:]
    assert path == [State.ACTIVATE, State.HEALTH_CHECK, State.ROLLBACK, State.FAILED]


def test_first_install_failing_health_leaves_nothing_active(make_agent, publisher, agent_dir):
    deactivated = []
    machine = make_agent(deactivate=lambda: deactivated.append(True))
    assert install(machine, publisher, "v1", healthy=False) == State.FAILED
    assert machine.current_version() is None
    assert deactivated == [True]


def test_tampered_manifest_is_refused(make_agent, publisher, servicer):
    machine = make_agent()
    data, sig, _ = publisher.publish("m", "v1", model_files("v1"))
    raw = json.loads(data)
    raw["files"][0]["sha256"] = "0" * 64
    tampered = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(IntegrityError, match="signature"):
        machine.start(tampered, sig)
    assert machine.state == State.FAILED
    assert machine.transitions[-1].event == Event.REJECTED
    assert servicer.bytes_sent == 0  # nothing was downloaded for it


def test_flipped_byte_with_matching_crc_fails_verify(make_agent, publisher, servicer, agent_dir):
    """A blob that is wrong on the controller (crc of the wrong data) passes the chunk check but not the
    manifest's sha256: the file is fetched once more, then the version is refused and cleaned up."""
    machine = make_agent()
    assert install(machine, publisher, "v1") == State.DONE
    data, sig, manifest = publisher.publish("m", "v2", model_files("v2"))
    weights = next(f for f in manifest.files if f.path == "model.onnx.data")

    def flip(sha, chunk):
        if sha == weights.sha256 and chunk.offset == 0:
            import zlib

            bad = bytes([chunk.data[0] ^ 0xFF]) + chunk.data[1:]
            chunk = type(chunk)(offset=chunk.offset, data=bad, total_size=chunk.total_size, crc32=zlib.crc32(bad))
        return chunk

    servicer.tamper = flip
    assert machine.start(data, sig)
    assert machine.run_to_completion() == State.FAILED
    assert "sha256" in machine.snapshot.message
    assert servicer.bytes_for(weights.sha256) == 2 * weights.size  # refused, fetched again, refused
    states = [t.to_state for t in machine.transitions]
    assert State.CLEANUP in states and State.ACTIVATE not in states[-8:]
    assert machine.current_version() == ("m", "v1")
    assert active(agent_dir) == "v1"
    assert not list((agent_dir / "downloads").iterdir())


def test_disk_space_is_checked_before_download(make_agent, publisher, servicer):
    machine = make_agent(reserve_bytes=1 << 60)  # more than any disk has free
    data, sig, _ = publisher.publish("m", "v1", model_files("v1"))
    assert machine.start(data, sig)
    assert machine.run_to_completion() == State.FAILED
    assert "not enough disk space" in machine.snapshot.message
    assert servicer.bytes_sent == 0
    assert DiskSpaceError.code == "RESOURCE_EXHAUSTED"


def test_state_loop_guard_ends_a_retry_loop(make_agent, publisher, agent_dir):
    """With the controller unreachable the download is retried, then the guard fails the install."""
    import grpc

    from agent.install.grpc_fetch import grpc_fetch

    dead = grpc.insecure_channel("127.0.0.1:1")  # nothing listens on port 1
    machine = make_agent(fetch=grpc_fetch(dead, timeout_s=2), state_limits={State.DOWNLOAD: 3})
    data, sig, _ = publisher.publish("m", "v1", model_files("v1"))
    assert machine.start(data, sig)
    assert machine.run_to_completion() == State.FAILED
    events = [t.event for t in machine.transitions]
    assert events.count(Event.RETRY) == 3 and Event.GUARD in events
    assert "state-loop guard: DOWNLOAD entered 4 times" in machine.snapshot.message
    assert "UNAVAILABLE" in machine.snapshot.message


# (state the injected exception hits, final current version, what is active)
INJECT = [
    (State.DOWNLOAD, "v1", "v1"),
    (State.VERIFY, "v1", "v1"),
    (State.INSTALL, "v1", "v1"),
    (State.ACTIVATE, "v1", "v1"),
    (State.HEALTH_CHECK, "v1", "v1"),
    (State.COMMIT, "v1", "v1"),
    (State.CLEANUP, "v1", "v1"),
    (State.ROLLBACK, "v1", "v1"),
]


@pytest.mark.parametrize(("state", "current", "serving"), INJECT, ids=[s for s, _, _ in INJECT])
def test_injected_exception_in_each_state(make_agent, publisher, agent_dir, monkeypatch, state, current, serving):
    machine = make_agent()
    assert install(machine, publisher, "v1") == State.DONE
    real = steps.HANDLERS[state]
    calls = []

    def boom(m):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError(f"injected fault in {state}")
        return real(m)

    monkeypatch.setitem(steps.HANDLERS, state, boom)
    # CLEANUP needs a pre-activation failure, ROLLBACK a post-activation one: a broken v2 provides both paths.
    healthy = state not in (State.ROLLBACK,)
    data, sig, _ = publisher.publish("m", "v2", model_files("v2", healthy=healthy))
    if state == State.CLEANUP:

        def refuse(m):
            raise IntegrityError("refused by the test")

        monkeypatch.setitem(steps.HANDLERS, State.VERIFY, refuse)
    assert machine.start(data, sig)
    final = machine.run_to_completion()
    assert calls, f"{state} never ran"
    assert final == State.FAILED
    assert machine.current_version() == ("m", current)
    assert active(agent_dir) == serving
    assert (agent_dir / "models" / "m" / current).is_dir()
    if state not in (State.CLEANUP, State.ROLLBACK):
        assert f"injected fault in {state}" in machine.snapshot.message


def test_rollback_to_previous_on_request(make_agent, publisher, agent_dir):
    machine = make_agent()
    assert install(machine, publisher, "v1") == State.DONE
    assert install(machine, publisher, "v2") == State.DONE
    assert machine.rollback_to_previous() == State.IDLE
    assert machine.current_version() == ("m", "v1")
    assert machine.previous_version() == ("m", "v2")
    assert active(agent_dir) == "v1"
    assert machine.transitions[-1].event == Event.RESTORED


def test_old_versions_are_pruned_but_not_current_or_previous(make_agent, publisher, agent_dir):
    machine = make_agent(keep_versions=2)
    for v in ("v1", "v2", "v3"):
        assert install(machine, publisher, v) == State.DONE
    assert sorted(p.name for p in (agent_dir / "models" / "m").iterdir()) == ["v2", "v3"]


def test_abort_during_download_cleans_up(make_agent, publisher, servicer, agent_dir):
    machine = make_agent()
    data, sig, manifest = publisher.publish("m", "v1", model_files("v1", weights=b"x" * 2_000_000))
    assert machine.start(data, sig, max_bytes_per_s=1_000_000)
    import threading

    threading.Timer(0.3, machine.abort, args=("rollout aborted",)).start()
    assert machine.run_to_completion() == State.FAILED
    assert "cancelled" in machine.snapshot.message or "rollout aborted" in machine.snapshot.message
    assert servicer.bytes_sent < manifest.total_size
    assert not list((agent_dir / "downloads").iterdir())


def test_start_while_busy(make_agent, publisher):
    machine = make_agent()
    data, sig, _ = publisher.publish("m", "v1", model_files("v1"))
    other, other_sig, _ = publisher.publish("m", "v2", model_files("v2"))
    assert machine.start(data, sig)
    assert machine.step() == State.VERIFY  # one handler run at a time
    assert machine.start(data, sig) is False  # the same desired version again (next heartbeat): keep going
    with pytest.raises(FailedPrecondition, match="in progress"):
        machine.start(other, other_sig)
    assert machine.run_to_completion() == State.DONE
    fresh = make_agent()  # a restarted agent sees the finished install
    assert fresh.state == State.DONE and fresh.current_version() == ("m", "v1")


def test_a_version_that_failed_its_health_check_is_not_retried_in_the_same_rollout(make_agent, publisher, servicer):
    machine = make_agent()
    data, sig, _ = publisher.publish("m", "v1", model_files("v1", healthy=False))
    assert machine.start(data, sig, "rollout-7") and machine.run_to_completion() == State.FAILED
    sent = servicer.bytes_sent
    assert machine.start(data, sig, "rollout-7") is False  # the next heartbeat repeats the desired version
    assert servicer.bytes_sent == sent
    assert machine.start(data, sig, "rollout-8")  # a new rollout (or force=True) tries again
    assert machine.run_to_completion() == State.FAILED


def test_a_stopping_agent_leaves_its_install_to_resume_not_failed(make_agent, publisher, agent_dir):
    """The agent stops (SIGTERM) while the new version is being activated: nothing is rolled back or reported
    as failed; the next start checks its health and commits it, as after a crash at that point."""
    first = make_agent()

    def activate_then_stop(model_dir: Path) -> None:
        (agent_dir / "active.txt").write_text(str(model_dir))
        first.pause()  # the agent's stop() arrives while this step runs

    first.activate = activate_then_stop
    data, sig, _ = publisher.publish("m", "v1", model_files("v1"))
    assert first.start(data, sig, "rollout-1")
    assert first.run_to_completion() == State.HEALTH_CHECK  # the step it was in finished; the next did not start
    reported = [t.to_state for t in first.transitions]
    assert State.ROLLBACK not in reported and State.FAILED not in reported
    assert first.step() == State.HEALTH_CHECK  # paused: no further step runs in this process

    second = make_agent()  # the next agent start, on the same state file
    assert second.state == State.HEALTH_CHECK
    assert second.resume() == State.DONE
    assert second.current_version() == ("m", "v1") and active(agent_dir) == "v1"


def test_a_stop_mid_download_keeps_what_was_downloaded(make_agent, publisher, agent_dir, channel, servicer):
    """A stop during DOWNLOAD interrupts the transfer; what arrived stays and the next start resumes."""
    from agent.install.grpc_fetch import grpc_fetch

    real = grpc_fetch(channel)
    machine = None

    def fetch_then_stop(sha256: str, offset: int, max_bps: int):
        for i, chunk in enumerate(real(sha256, offset, max_bps)):
            yield chunk
            if i == 0 and machine is not None:
                machine.pause()

    machine = make_agent(fetch=fetch_then_stop)
    weights = bytes(range(256)) * 12_000  # ~3 MB: several 1 MiB chunks
    data, sig, _ = publisher.publish("m", "v1", model_files("v1", weights=weights))
    assert machine.start(data, sig, "rollout-1")
    assert machine.run_to_completion() == State.DOWNLOAD
    assert [t.to_state for t in machine.transitions] == [State.DOWNLOAD]  # only the start was reported
    kept = [p for p in (agent_dir / "downloads").iterdir() if p.suffix != ".part"]
    assert kept  # the file that completed before the stop is not fetched again
    kept_bytes = sum(p.stat().st_size for p in kept)
    sent_before = servicer.bytes_sent

    resumed = make_agent()
    assert resumed.resume() == State.DONE
    assert resumed.current_version() == ("m", "v1")
    manifest = publisher.made["v1"]
    assert servicer.bytes_sent - sent_before <= manifest.total_size - kept_bytes
