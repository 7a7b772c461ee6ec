"""Output JSON schemas for tasks: derived from a dataset's JSON answers, for guided decoding (issue #16).

:func:`derive_schema` reads every answer of a dataset (JSON text) and writes the tightest plain JSON schema that
accepts them all and that LLGuidance can enforce: objects list the keys seen (``required`` = keys in every
answer, no others allowed), strings with few distinct values become an ``enum``, otherwise a ``maxLength``
with headroom; integers and numbers get the range seen; arrays the union of their items. A schema that bounds
every string and number also bounds how long a guided answer can run, which a small model needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from shared.errors import InvalidArgument

# Distinct string values up to which a string becomes an enum.
MAX_ENUM = 24
_TYPE = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


class _Shape:
    """What the values seen at one place of the answers had in common."""

    def __init__(self) -> None:
        self.types: set[str] = set()
        self.strings: set[str] = set()
        self.max_len = 0
        self.low: float | None = None
        self.high: float | None = None
        self.keys: dict[str, _Shape] = {}
        self.key_counts: dict[str, int] = {}
        self.objects = 0
        self.items: _Shape | None = None
        self.null = False

    def add(self, value: Any) -> None:
        if value is None:
            self.null = True
            return
        kind = _TYPE[type(value)]
        self.types.add(kind)
        if kind == "string":
            self.strings.add(value)
            self.max_len = max(self.max_len, len(value))
        elif kind in ("integer", "number"):
            self.low = value if self.low is None else min(self.low, value)
            self.high = value if self.high is None else max(self.high, value)
        elif kind == "object":
            self.objects += 1
            for key, item in value.items():
                self.keys.setdefault(key, _Shape()).add(item)
                self.key_counts[key] = self.key_counts.get(key, 0) + 1
        elif kind == "array":
            self.items = self.items or _Shape()
            for item in value:
                self.items.add(item)

    def schema(self) -> dict[str, Any]:
        parts = [self._one(kind) for kind in sorted(self.types - ({"integer"} if "number" in self.types else set()))]
        if self.null:
            parts.append({"type": "null"})
        if not parts:
            return {}
        return parts[0] if len(parts) == 1 else {"anyOf": parts}

    def _one(self, kind: str) -> dict[str, Any]:
        if kind == "string":
            if len(self.strings) <= MAX_ENUM:
                return {"type": "string", "enum": sorted(self.strings)}
            return {"type": "string", "maxLength": max(8, 2 * self.max_len)}
        if kind in ("integer", "number"):
            return {"type": kind, "minimum": self.low, "maximum": self.high}
        if kind == "object":
            required = sorted(k for k, n in self.key_counts.items() if n == self.objects)
            props = {k: shape.schema() for k, shape in sorted(self.keys.items())}
            return {"type": "object", "properties": props, "required": required, "additionalProperties": False}
        if kind == "array":
            return {"type": "array", "items": self.items.schema() if self.items else {}}
        return {"type": kind}


def derive_schema(answers: Iterable[str]) -> dict[str, Any]:
    """The JSON schema of a dataset's answers (each a JSON document); InvalidArgument if one is not JSON."""
    shape, n = _Shape(), 0
    for i, text in enumerate(answers):
        try:
            shape.add(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(f"answer {i} is not JSON ({exc}); an output schema needs JSON answers") from exc
        n += 1
    if n == 0:
        raise InvalidArgument("no answers to derive an output schema from")
    return shape.schema()


def derive_schema_from_jsonl(path: Path, limit: int = 0, stream: IO[str] | None = None) -> dict[str, Any]:
    """:func:`derive_schema` over the ``response`` field of a JSONL dataset (``stream``: its lines)."""
    from controller.factory.tasks.datasets import read_jsonl

    examples = read_jsonl(Path(path), require_response=True, limit=limit or None, stream=stream)
    return derive_schema(ex.response or "" for ex in examples)


def version_schema(task: str, data: Path | None, stream: IO[str] | None = None) -> dict[str, Any] | None:
    """The output schema a published version carries: its task's own, else one derived from the JSON answers of
    the data its student learned (``data``, read from ``stream`` when given); None when the task has none and
    the answers are not all JSON."""
    from controller.factory.evaluation.guided import schema_for

    schema = schema_for({"task": task}) if task else None
    if schema is not None or data is None:
        return schema
    try:
        return derive_schema_from_jsonl(data, stream=stream)
    except InvalidArgument:
        return None  # free-text answers: nothing to enforce
