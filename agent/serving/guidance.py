"""Request fields -> one guided-decoding spec (kind, data) for LLGuidance; 400s for what cannot be enforced.

Sources, at most one per request: ``response_format`` (``json_object``, ``json_schema``), the vLLM-style extra
fields ``guided_json``, ``guided_regex``, ``guided_grammar`` (Lark), the tool-call grammar (see
:mod:`agent.serving.tools`), or else the served model's task schema when the agent enforces it by default.
JSON schemas get compact separators (``x-guidance``: no free whitespace between tokens) unless the schema sets
its own ``x-guidance``: a flexible-whitespace grammar lets a small model pad its answer with whitespace until
``max_tokens`` runs out, and OpenAI's own structured outputs are compact too.
"""

from __future__ import annotations

from typing import Any

from agent.serving.errors import RequestFieldError
from shared.guided_json import json_schema_guidance

JSON_OBJECT: dict[str, Any] = {"type": "object"}


def schema_spec(schema: dict[str, Any]) -> tuple[str, str]:
    """The ``json_schema`` guidance for ``schema`` (compact unless it says otherwise)."""
    if not isinstance(schema, dict):
        raise RequestFieldError("response_format.json_schema.schema", "the schema must be a JSON object")
    return json_schema_guidance(schema)


def response_format_spec(fmt: dict[str, Any] | None) -> tuple[str, str] | None:
    """``response_format`` -> guidance; ``text`` or absent -> None."""
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return schema_spec(JSON_OBJECT)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name", ""), str):
            raise RequestFieldError(
                "response_format.json_schema", "send json_schema as an object with 'name' and 'schema'"
            )
        schema = spec.get("schema")
        return schema_spec(JSON_OBJECT if schema is None else schema)
    raise RequestFieldError(
        "response_format.type",
        f"response_format type '{kind}' is not supported; use 'text', 'json_object' or 'json_schema'",
    )


def request_spec(
    response_format: dict[str, Any] | None,
    guided_json: dict[str, Any] | None,
    guided_regex: str | None,
    guided_grammar: str | None,
) -> tuple[str, tuple[str, str]] | None:
    """(field that asked, guidance) from the request's own fields; 400 when several ask at once."""
    found: list[tuple[str, tuple[str, str]]] = []
    if (spec := response_format_spec(response_format)) is not None:
        found.append(("response_format", spec))
    if guided_json is not None:
        found.append(("guided_json", schema_spec(guided_json)))
    if guided_regex is not None:
        found.append(("guided_regex", ("regex", guided_regex)))
    if guided_grammar is not None:
        found.append(("guided_grammar", ("lark_grammar", guided_grammar)))
    if len(found) > 1:
        names = ", ".join(n for n, _ in found)
        raise RequestFieldError(found[1][0], f"send one output constraint per request, not several ({names})")
    return found[0] if found else None
