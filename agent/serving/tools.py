"""Tool calling: the prompt that lists the tools, the grammar a call must follow, and the parse of a call.

The model answers a call as JSON: ``[{"name": "<tool>", "arguments": {...}}, ...]`` (one element unless
``parallel_tool_calls``). The grammar is built from the tool schemas, so every call names a declared tool and
its arguments are valid against that tool's ``parameters``:

- ``tool_choice`` ``required`` / a named function: the output is exactly such a JSON array (``json_schema``);
- ``auto``: Lark, ``start: call | TEXT`` (``call`` is the same schema via ``%json``, ``TEXT`` any answer that
  does not start with ``[``), so the model may call or answer;
- ``none``: no grammar, tools not offered.

History: an assistant message's ``tool_calls`` are rendered as that same JSON (what the model would have
written) and ``tool`` messages keep their role, so the model's chat template renders them.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from agent.serving.errors import RequestFieldError
from shared.guided_json import COMPACT

MAX_PARALLEL = 4
TOOLS_PROMPT = (
    "You can call these tools (JSON schemas of their arguments):\n{tools}\n"
    'To call tools, answer only with a JSON array: [{{"name": "<tool name>", "arguments": {{...}}}}].'
)


def _functions(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function")
        if tool.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RequestFieldError(f"tools.{i}", "each tool must be {'type': 'function', 'function': {'name', ...}}")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise RequestFieldError(f"tools.{i}.function.parameters", "parameters must be a JSON schema object")
        out[fn["name"]] = {"description": fn.get("description", ""), "parameters": params}
    return out


def chosen(tools: list[dict[str, Any]], choice: str | dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(mode, the functions a call may use): mode is none, auto or required."""
    functions = _functions(tools)
    if choice is None or choice in ("auto", "none", "required"):
        return (choice or "auto"), functions  # type: ignore[return-value]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in functions:
            raise RequestFieldError("tool_choice", f"tool_choice names '{name}', which is not in tools")
        return "required", {name: functions[name]}
    raise RequestFieldError("tool_choice", "tool_choice must be 'none', 'auto', 'required' or a named function")


def calls_schema(functions: dict[str, dict[str, Any]], parallel: bool) -> dict[str, Any]:
    one = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": spec["parameters"]},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, spec in functions.items()
    ]
    item = one[0] if len(one) == 1 else {"anyOf": one}
    top = MAX_PARALLEL if parallel else 1
    return {"type": "array", "items": item, "minItems": 1, "maxItems": top, "x-guidance": COMPACT}


def guidance(mode: str, functions: dict[str, dict[str, Any]], parallel: bool) -> tuple[str, str] | None:
    if mode == "none":
        return None
    schema = json.dumps(calls_schema(functions, parallel))
    if mode == "required":
        return "json_schema", schema
    return "lark_grammar", f"start: call | TEXT\nTEXT: /[^\\[](.|\\n)*/\ncall: %json {schema}\n"


def system_prompt(functions: dict[str, dict[str, Any]]) -> str:
    listing = [
        {"name": name, "description": spec["description"], "parameters": spec["parameters"]}
        for name, spec in functions.items()
    ]
    return TOOLS_PROMPT.format(tools=json.dumps(listing))


def render_calls(tool_calls: list[dict[str, Any]]) -> str:
    """An assistant message's ``tool_calls`` as the JSON the model writes for them."""
    calls = []
    for call in tool_calls:
        fn = call.get("function") or {}
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            args = fn.get("arguments")
        calls.append({"name": fn.get("name", ""), "arguments": args})
    return json.dumps(calls)


def parse_calls(text: str, functions: dict[str, dict[str, Any]]) -> list[dict[str, Any]] | None:
    """OpenAI ``tool_calls`` from the model's answer; None when the answer is not a call."""
    stripped = text.strip()
    if not stripped.startswith("["):
        return None
    try:
        raw = json.loads(stripped)
    except ValueError:
        return None
    if not isinstance(raw, list) or not raw:
        return None
    out = []
    for call in raw:
        if not isinstance(call, dict) or call.get("name") not in functions:
            return None
        out.append(
            {
                "id": "call_" + uuid.uuid4().hex[:24],
                "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))},
            }
        )
    return out
