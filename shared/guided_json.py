"""JSON-schema guidance as devices apply it (shared by the agent's API, the factory's evaluation and the drift
reference, so all three decode under the same grammar)."""

from __future__ import annotations

import json
from typing import Any

# Compact JSON: no free whitespace between tokens (left free, a small model pads with whitespace to max_tokens).
COMPACT = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


def json_schema_guidance(schema: dict[str, Any]) -> tuple[str, str]:
    """The ``("json_schema", text)`` guidance for ``schema``: compact unless the schema's ``x-guidance`` says
    otherwise."""
    if "x-guidance" not in schema:
        schema = {**schema, "x-guidance": COMPACT}
    return "json_schema", json.dumps(schema)
