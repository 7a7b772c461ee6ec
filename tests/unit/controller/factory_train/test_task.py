"""The bundled smart-building task: deterministic, disjoint splits, a shifted variant, exact scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.factory.tasks import DatasetError, get_task, read_jsonl, task_names, write_jsonl
from shared.errors import NotFound

TASK = get_task("smart-building")


def test_registry_names_the_task_and_lists_known_on_unknown() -> None:
    assert "smart-building" in task_names()
    with pytest.raises(NotFound, match="smart-building"):
        get_task("no-such-task")


def test_generate_is_deterministic_and_seed_dependent() -> None:
    a = TASK.generate("train", 300, seed=1)
    assert a == TASK.generate("train", 300, seed=1)
    assert a != TASK.generate("train", 300, seed=2)
    assert len({r["prompt"] for r in a}) == 300


def test_splits_are_disjoint_across_seeds() -> None:
    prompts = {
        split: {r["prompt"] for seed in (0, 1) for r in TASK.generate(split, 400, seed=seed)}
        for split in ("train", "validation", "test")
    }
    assert not prompts["train"] & prompts["test"]
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["validation"] & prompts["test"]


def test_responses_are_canonical_json_with_known_intents() -> None:
    for rec in TASK.generate("test", 200, seed=0):
        obj = json.loads(rec["response"])
        assert set(obj) == {"intent", "slots"}
        assert obj["intent"] in TASK.intents
        assert rec["response"] == json.dumps(obj, sort_keys=True, separators=(",", ":"))
    intents = {json.loads(r["response"])["intent"] for r in TASK.generate("train", 500, seed=0)}
    assert len(intents) >= 10


def test_shifted_variant_changes_surface_not_schema() -> None:
    base = TASK.generate("test", 300, seed=0)
    shifted = TASK.generate("test", 300, seed=0, variant="shifted")
    base_words = {w for r in base for w in r["prompt"].split()}
    shifted_words = {w for r in shifted for w in r["prompt"].split()}
    new_words = shifted_words - base_words
    assert len(new_words) > 40  # new vocabulary
    assert any(" pm" in r["prompt"] or " am" in r["prompt"] for r in shifted)  # 12-hour clock
    assert {json.loads(r["response"])["intent"] for r in shifted} <= set(TASK.intents)
    timed = [json.loads(r["response"])["slots"]["time"] for r in shifted if '"time"' in r["response"]]
    assert timed and all(len(t) == 5 and t[2] == ":" for t in timed)  # still canonical HH:MM


def test_score_exact_and_valid_json() -> None:
    ref = '{"intent":"lights_off","slots":{"room":"lab 3","time":"18:30"}}'
    assert TASK.score(ref, ref) == {"exact": True, "valid_json": True}
    reordered = '{"slots": {"time": "18:30", "room": "lab 3"}, "intent": "lights_off"}'
    assert TASK.score(reordered, ref)["exact"]
    wrong = '{"intent":"lights_off","slots":{"room":"lab 4","time":"18:30"}}'
    assert TASK.score(wrong, ref) == {"exact": False, "valid_json": True}
    assert TASK.score('{"intent":"lights_off"', ref) == {"exact": False, "valid_json": False}
    agg = TASK.score_many([ref, wrong, "nope"], [ref, ref, ref])
    assert agg["n"] == 3 and agg["exact_match"] == pytest.approx(1 / 3) and agg["valid_json"] == pytest.approx(2 / 3)


def test_jsonl_round_trip_and_chat_records(tmp_path: Path) -> None:
    recs = TASK.generate("validation", 5, seed=0)
    chat = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "{}"},
        ]
    }
    path = write_jsonl(tmp_path / "d.jsonl", [*recs, chat])
    examples = read_jsonl(path)
    assert [e.prompt for e in examples[:5]] == [r["prompt"] for r in recs]
    assert examples[5].messages[0]["role"] == "system" and examples[5].response == "{}"
    assert examples[5].prompt == "hi"


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"prompt": "x"}', "missing field 'response'"),
        ('{"response": "x"}', "missing field 'prompt'"),
        ('{"messages": [{"role": "user"}]}', "missing field 'content'"),
        ('{"messages": [{"role": "user", "content": "q"}]}', "role 'assistant'"),
        ("not json", "not valid JSON"),
    ],
)
def test_jsonl_errors_name_file_line_and_field(tmp_path: Path, line: str, needle: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n' + line + "\n")
    with pytest.raises(DatasetError) as err:
        read_jsonl(path)
    assert f"{path}:2" in str(err.value) and needle in str(err.value)


def test_prompt_only_records_allowed_when_response_not_required(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n')
    assert read_jsonl(path, require_response=False)[0].response is None
