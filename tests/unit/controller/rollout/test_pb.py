from __future__ import annotations

from controller.rollout import RolloutSpec, create_rollout, desired_for, get_rollout
from controller.rollout.pb import desired_to_pb, report_args, spec_from_pb, to_pb
from controller.store.db import Store
from shared.pb import admin_pb2, agent_pb2, common_pb2

from .fleet import Fleet


def test_spec_from_pb_applies_proto_defaults() -> None:
    req = admin_pb2.CreateRolloutRequest(
        model=common_pb2.ModelRef(name="m", version="2"), waves=[10, 100], max_failure=0.2, gate="error_rate<=0.1"
    )
    spec = spec_from_pb(req).validated()
    assert (spec.model_name, spec.model_version, spec.waves, spec.max_failure) == ("m", "2", [10, 100], 0.2)
    assert spec.approve == "auto" and spec.device_timeout_s == 900 and spec.soak_s == 0
    assert spec_from_pb(admin_pb2.CreateRolloutRequest()).waves == [100]


def test_rollout_and_desired_to_pb(sqlite_store: Store) -> None:
    fleet = Fleet(sqlite_store)
    fleet.model("m", "1", ["cpu-int4"])
    fleet.model("m", "2", ["cpu-int4"])
    fleet.device("a0", "cpu-int4", installed="m:1")
    fleet.device("g0", "cuda-fp16")
    rid = create_rollout(sqlite_store, RolloutSpec("m", "2", approve="manual", gate="tokens_per_s>=5"), now=10.0)
    msg = to_pb(get_rollout(sqlite_store, rid))
    assert msg.rollout_id == rid and msg.state == admin_pb2.ROLLOUT_STATE_ACTIVE
    assert (msg.model.name, msg.model.version, list(msg.waves), msg.approve) == ("m", "2", [100], "manual")
    targets = {t.agent_id: t for t in msg.targets}
    assert targets["a0"].state == "assigned" and targets["a0"].previous.version == "1"
    assert targets["g0"].state == "skipped" and targets["g0"].hostname == "host-g0"
    desired = desired_to_pb(desired_for(sqlite_store, "a0", now=11.0), max_bytes_per_s=1000)
    assert desired is not None and desired.rollout_id == rid and desired.max_bytes_per_s == 1000
    assert desired.manifest.signature == b"sig:m:2:cpu-int4" and desired.model.version == "2"
    assert desired_to_pb(desired_for(sqlite_store, "g0", now=11.0)) is None


def test_report_args_normalise_states() -> None:
    report = agent_pb2.InstallReport(
        agent_id="a0",
        rollout_id="ro-1",
        model=common_pb2.ModelRef(name="m", version="2"),
        from_state=common_pb2.INSTALL_STATE_HEALTH_CHECK,
        to_state=common_pb2.INSTALL_STATE_COMMIT,
        timestamp=5.0,
    )
    args = report_args(report)
    assert (args["from_state"], args["to_state"], args["ts"]) == ("HEALTH_CHECK", "COMMIT", 5.0)
