"""The bundled task: smart-building operator requests -> one-line JSON command (intent + slots).

    "turn off the lights in meeting room 3 at 18:30"
    -> {"intent":"lights_off","slots":{"room":"meeting room 3","time":"18:30"}}

Answers are canonical JSON (sorted keys, no spaces), so exact match is a fair score. Splits are disjoint by
construction: every prompt belongs to exactly one split, decided by a hash of its text. The ``shifted`` variant
keeps the intents and schema but changes vocabulary, phrasing and slot formats (12-hour times, ordinal floors).
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from controller.factory.tasks.base import Task, check_split, register_task
from controller.factory.tasks.smart_building_vocab import INTENT_SLOTS, TIMED_INTENTS, VOCABS, Vocab

# Out of 20 hash buckets: 0-15 train, 16-17 validation, 18-19 test.
_BUCKETS = {"train": range(0, 16), "validation": range(16, 18), "test": range(18, 20)}
_TIME_PROBABILITY = 0.4


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def split_of(prompt: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big") % 20
    return next(name for name, rng in _BUCKETS.items() if bucket in rng)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _spoken_time(hour: int, minute: int, clock: str) -> str:
    if clock == "24h":
        return f"{hour:02d}:{minute:02d}"
    half = "am" if hour < 12 else "pm"
    h12 = hour % 12 or 12
    return f"{h12} {half}" if minute == 0 else f"{h12}:{minute:02d} {half}"


def _room(rng: random.Random, vocab: Vocab) -> str:
    if rng.random() < 0.7:
        return f"{rng.choice(vocab.numbered_rooms)} {rng.randint(1, 40)}"
    return rng.choice(vocab.named_rooms)


def _sample(rng: random.Random, vocab: Vocab) -> dict[str, str]:
    intent = rng.choice(sorted(INTENT_SLOTS))
    spoken: dict[str, str] = {}
    slots: dict[str, Any] = {}
    for slot in INTENT_SLOTS[intent]:
        if slot == "room":
            slots["room"] = spoken["room"] = _room(rng, vocab)
        elif slot == "device":
            slots["device"] = spoken["device"] = rng.choice(vocab.devices)
        elif slot == "level":
            level = rng.randrange(0, 101, 5)
            slots["level"], spoken["level"] = level, str(level)
        elif slot == "value":
            value = rng.randint(16, 28) + (0.5 if rng.random() < 0.3 else 0.0)
            slots["value"] = int(value) if value.is_integer() else value
            spoken["value"] = str(slots["value"])
        elif slot == "floor":
            floor = rng.randint(1, 30)
            slots["floor"] = floor
            spoken["floor"] = _ordinal(floor) if vocab.floor_style == "ordinal" else str(floor)
    text = rng.choice(vocab.phrasings[intent]).format(**spoken)
    if intent in TIMED_INTENTS and rng.random() < _TIME_PROBABILITY:
        hour, minute = rng.randint(0, 23), rng.randrange(0, 60, 5)
        slots["time"] = f"{hour:02d}:{minute:02d}"
        text = rng.choice(vocab.time_forms).format(text=text, time=_spoken_time(hour, minute, vocab.clock))
    prompt = rng.choice(vocab.prefixes) + text
    return {"prompt": prompt, "response": canonical_json({"intent": intent, "slots": slots})}


_SLOT_SCHEMAS: dict[str, dict[str, Any]] = {
    "room": {"type": "string", "minLength": 1, "maxLength": 40},
    "device": {"type": "string", "minLength": 1, "maxLength": 40},
    "level": {"type": "integer", "minimum": 0, "maximum": 100},
    "value": {"type": "number", "minimum": 10, "maximum": 35},
    "floor": {"type": "integer", "minimum": 0, "maximum": 200},
    "time": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
}


def output_schema() -> dict[str, Any]:
    """The task's answer schema: ``{"intent": <one of the intents>, "slots": {...that intent's slots}}``."""
    branches = []
    for intent, slots in sorted(INTENT_SLOTS.items()):
        names = [*slots, "time"] if intent in TIMED_INTENTS else list(slots)
        branches.append(
            {
                "type": "object",
                "properties": {
                    "intent": {"const": intent},
                    "slots": {
                        "type": "object",
                        # Sorted like canonical_json writes the answers the students learn: guided decoding emits
                        # properties in this order, and another order would force unfamiliar answers.
                        "properties": {name: _SLOT_SCHEMAS[name] for name in sorted(names)},
                        "required": list(slots),
                        "additionalProperties": False,
                    },
                },
                "required": ["intent", "slots"],
                "additionalProperties": False,
            }
        )
    return {"title": "smart-building command", "anyOf": branches}


def parse_command(text: str) -> dict[str, Any] | None:
    """The JSON object in ``text`` (surrounding whitespace allowed), or None when it is not one."""
    try:
        value = json.loads(text.strip())
    except (ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None


@register_task
class SmartBuildingTask(Task):
    name = "smart-building"
    description = "smart-building operator requests -> one-line JSON command (intent + slots)"
    intents = tuple(sorted(INTENT_SLOTS))

    def generate(self, split: str, n: int, seed: int = 0, variant: str = "base") -> list[dict[str, str]]:
        check_split(split, variant)
        vocab = VOCABS[variant]
        rng = random.Random(f"smart-building:{variant}:{split}:{seed}")
        seen: set[str] = set()
        records: list[dict[str, str]] = []
        attempts = 0
        while len(records) < n:
            attempts += 1
            if attempts > 200 * n + 1000:
                raise ValueError(f"cannot draw {n} distinct '{split}' examples; ask for fewer")
            rec = _sample(rng, vocab)
            if rec["prompt"] in seen or split_of(rec["prompt"]) != split:
                continue
            seen.add(rec["prompt"])
            records.append(rec)
        return records

    def output_schema(self) -> dict[str, Any]:
        """One branch per intent: its intent name, exactly its slots (and the optional time), bounded values."""
        return output_schema()

    def score(self, prediction: str, reference: str) -> dict[str, bool]:
        pred = parse_command(prediction)
        ref = parse_command(reference)
        return {"exact": pred is not None and pred == ref, "valid_json": pred is not None}
