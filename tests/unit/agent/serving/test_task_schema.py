"""Which task schema an agent serves: the model version's, else its profile's (heartbeat), and enforcement."""

from __future__ import annotations

import json

from agent.serving.service import Serving, ServingConfig, task_schema
from shared.manifest import Manifest
from shared.pb import common_pb2
from shared.profiles import DeviceProfile

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


def _manifest(**kw: object) -> Manifest:
    return Manifest(name="m", version="1", profile="p", precision="int4", execution_provider="cpu", files=[], **kw)


def test_version_schema_wins_and_profile_fills_in() -> None:
    profile = common_pb2.Profile(name="p", output_schema_json=json.dumps({"type": "string"}), enforce_schema=True)
    assert task_schema(_manifest(output_schema=SCHEMA), profile) == (SCHEMA, True)
    assert task_schema(_manifest(), profile) == ({"type": "string"}, True)
    assert task_schema(_manifest(output_schema=SCHEMA, enforce_schema=True), None) == (SCHEMA, True)
    assert task_schema(_manifest(), None) == (None, False)
    # a profile that only asks for enforcement: the schema each version publishes is enforced
    enforcing = common_pb2.Profile(name="p", enforce_schema=True)
    assert task_schema(_manifest(output_schema=SCHEMA), enforcing) == (SCHEMA, True)
    assert DeviceProfile(name="p", precision="int4", enforce_schema=True).output_schema is None
    broken = common_pb2.Profile(name="p", output_schema_json="{not json")
    assert task_schema(_manifest(), broken) == (None, False)


def test_manifest_round_trips_the_schema() -> None:
    m = _manifest(output_schema=SCHEMA, enforce_schema=True)
    back = Manifest.from_json(m.to_json())
    assert back.output_schema == SCHEMA and back.enforce_schema is True
    old = json.loads(_manifest().to_json())
    del old["output_schema"], old["enforce_schema"]  # a manifest signed before these fields existed
    assert Manifest.from_json(json.dumps(old).encode()).output_schema is None


def test_enforcement_needs_a_schema() -> None:
    serving = Serving(ServingConfig(workers=1, max_queue=0))
    try:
        serving.set_output_schema(None, True)
        assert serving.config.enforce_schema is False
        serving.set_output_schema(SCHEMA, True)
        assert serving.config.enforce_schema is True and serving.config.output_schema == SCHEMA
    finally:
        serving.close()
