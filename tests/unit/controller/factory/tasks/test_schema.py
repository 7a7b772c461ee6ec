"""Output schemas: the bundled task's and the one derived from a dataset's JSON answers (issue #16)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from controller.factory.tasks import get_task
from controller.factory.tasks.schema import derive_schema, derive_schema_from_jsonl
from shared.errors import InvalidArgument


def test_the_bundled_task_ships_a_schema_its_answers_follow() -> None:
    task = get_task("smart-building")
    schema = task.output_schema()
    for variant in ("base", "shifted"):
        for rec in task.generate("test", 200, 0, variant):
            jsonschema.validate(json.loads(rec["response"]), schema)
    # a wrong slot for the intent, or an unknown intent, is refused
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"intent": "call_elevator", "slots": {"room": "lobby"}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"intent": "make_coffee", "slots": {}}, schema)
    # guided decoding writes properties in schema order: it must be the order of the answers students learn
    for branch in schema["anyOf"]:
        names = list(branch["properties"]["slots"]["properties"])
        assert names == sorted(names), branch["properties"]["intent"]


def test_derived_schema_accepts_the_data_and_bounds_it(task_data) -> None:
    schema = derive_schema_from_jsonl(task_data["train"])
    for line in task_data["test"].read_text().splitlines():
        jsonschema.validate(json.loads(json.loads(line)["response"]), schema)
    assert schema["required"] == ["intent", "slots"] and schema["additionalProperties"] is False
    assert "lights_on" in schema["properties"]["intent"]["enum"]
    level = schema["properties"]["slots"]["properties"]["level"]
    assert level == {"type": "integer", "minimum": 0, "maximum": 100}


def test_derive_schema_types_enums_and_errors() -> None:
    answers = [json.dumps({"a": i, "b": f"name-{i}", "c": [True], "d": 0.5 * i}) for i in range(30)]
    answers.append(json.dumps({"a": 99, "b": "x", "c": [], "d": None}))
    schema = derive_schema(answers)
    props = schema["properties"]
    assert props["a"] == {"type": "integer", "minimum": 0, "maximum": 99}
    assert props["b"]["maxLength"] >= len("name-29") and "enum" not in props["b"]  # 31 values: too many
    assert props["c"] == {"type": "array", "items": {"type": "boolean"}}
    assert props["d"]["anyOf"][1] == {"type": "null"}
    assert derive_schema(['"on"', '"off"']) == {"type": "string", "enum": ["off", "on"]}
    with pytest.raises(InvalidArgument, match="answer 1 is not JSON"):
        derive_schema(['{"a": 1}', "not json"])


def test_a_version_carries_its_tasks_schema_else_one_derived_from_its_answers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from controller.factory.tasks.schema import version_schema

    assert version_schema("smart-building", None) == get_task("smart-building").output_schema()
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps({"prompt": f"p{i}", "response": json.dumps({"n": i})}) + "\n" for i in range(3)))
    derived = version_schema("", own)
    assert derived is not None and derived["properties"]["n"]["type"] == "integer"
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"prompt": "p", "response": "free text"}) + "\n")
    assert version_schema("", text) is None and version_schema("", None) is None
