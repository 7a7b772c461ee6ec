"""``--output table|json|yaml`` (and ``--json``) for every list/show command, as kubectl and the gh CLI do.

JSON and YAML are the RPC reply as data: protobuf field names, enums by name, every field present, and
each ``*_json`` string field (e.g. a job's ``summary_json``) parsed into the object it holds, under the name
without the suffix (``summary``). They go to stdout unstyled, so ``| jq`` and ``yaml.safe_load`` read them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

FORMATS = ("table", "json", "yaml")


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", "-o", choices=FORMATS, default="table", help="table (default), or the reply as json / yaml"
    )
    parser.add_argument("--json", dest="output", action="store_const", const="json", help="same as --output json")


def _expand(value: Any) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key.endswith("_json") and isinstance(item, str):
                try:
                    out[key.removesuffix("_json")] = json.loads(item) if item else None
                    continue
                except ValueError:
                    pass
            out[key] = _expand(item)
        return out
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def as_data(message: Any) -> Any:
    """A protobuf message (or a list of them) as plain JSON-able data (see the module doc)."""
    if isinstance(message, list | tuple):
        return [as_data(m) for m in message]
    from google.protobuf.json_format import MessageToDict

    raw = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return _expand(raw)


def emit(args: argparse.Namespace, data: Callable[[], Any], table: Callable[[], None]) -> int:
    """Print ``data()`` as JSON/YAML when ``--output`` asks for it, else call ``table()``; returns 0."""
    fmt = getattr(args, "output", "table") or "table"
    if fmt == "table":
        table()
        return 0
    value = data()
    if fmt == "json":
        sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(value, sort_keys=False, allow_unicode=True))
    sys.stdout.flush()
    return 0
