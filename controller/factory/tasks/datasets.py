"""JSONL datasets: ``{"prompt", "response"}`` or ``{"messages": [...]}`` records, checked line by line.

A chat record's last message is the answer when its role is ``assistant``; the turns before it are the
prompt. Errors name the file, the line and the missing or bad field.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shared.errors import InvalidArgument, NotFound

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


class DatasetError(InvalidArgument):
    """A dataset file is missing, unreadable or has a record without a required field."""

    def __init__(self, path: Path, line: int | None, reason: str) -> None:
        self.path, self.line, self.reason = Path(path), line, reason
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"dataset {where}: {reason}")


@dataclass
class Example:
    """One training or evaluation example: prompt turns (chat messages) and the answer (None if unknown)."""

    messages: list[dict[str, str]]
    response: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The last user turn's text."""
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else self.messages[-1]["content"]

    def to_record(self) -> dict[str, Any]:
        if len(self.messages) == 1 and self.messages[0]["role"] == "user":
            rec: dict[str, Any] = {"prompt": self.messages[0]["content"]}
            if self.response is not None:
                rec["response"] = self.response
        else:
            msgs = list(self.messages)
            if self.response is not None:
                msgs.append({"role": "assistant", "content": self.response})
            rec = {"messages": msgs}
        rec.update(self.extra)
        return rec


def _check_messages(msgs: Any, path: Path, line: int) -> list[dict[str, str]]:
    if not isinstance(msgs, list) or not msgs:
        raise DatasetError(path, line, "field 'messages' must be a non-empty list")
    out = []
    for i, msg in enumerate(msgs):
        if not isinstance(msg, dict):
            raise DatasetError(path, line, f"messages[{i}] must be an object with 'role' and 'content'")
        for key in ("role", "content"):
            if key not in msg:
                raise DatasetError(path, line, f"messages[{i}] is missing field '{key}'")
        if msg["role"] not in ROLES:
            raise DatasetError(path, line, f"messages[{i}].role '{msg['role']}' is not one of {ROLES}")
        if not isinstance(msg["content"], str):
            raise DatasetError(path, line, f"messages[{i}].content must be a string")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def record_to_example(rec: Any, path: Path, line: int, require_response: bool = True) -> Example:
    if not isinstance(rec, dict):
        raise DatasetError(path, line, "each line must be a JSON object")
    if "messages" in rec:
        msgs = _check_messages(rec["messages"], path, line)
        extra = {k: v for k, v in rec.items() if k != "messages"}
        if msgs[-1]["role"] == "assistant":
            return Example(msgs[:-1] or [{"role": "user", "content": ""}], msgs[-1]["content"], extra)
        if require_response:
            raise DatasetError(path, line, "the last message must have role 'assistant' (the answer)")
        return Example(msgs, None, extra)
    if "prompt" not in rec:
        raise DatasetError(path, line, "missing field 'prompt' (or 'messages')")
    if not isinstance(rec["prompt"], str):
        raise DatasetError(path, line, "field 'prompt' must be a string")
    if require_response and "response" not in rec:
        raise DatasetError(path, line, "missing field 'response'")
    response = rec.get("response")
    if response is not None and not isinstance(response, str):
        raise DatasetError(path, line, "field 'response' must be a string")
    extra = {k: v for k, v in rec.items() if k not in ("prompt", "response")}
    return Example([{"role": "user", "content": rec["prompt"]}], response, extra)


def read_jsonl(
    path: Path, require_response: bool = True, limit: int | None = None, stream: IO[str] | None = None
) -> list[Example]:
    """Read a dataset; raises :class:`DatasetError` naming file/line/field on the first bad record. ``stream``:
    read these lines instead of opening ``path`` (a file streamed from the blob store; ``path`` names it)."""
    path = Path(path)
    if stream is None:
        if not path.is_file():
            raise NotFound(f"dataset '{path}' does not exist" if not path.exists() else f"'{path}' is not a file")
        with open(path, encoding="utf-8") as fh:
            return read_jsonl(path, require_response, limit, fh)
    examples: list[Example] = []
    for lineno, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DatasetError(path, lineno, f"not valid JSON ({exc.msg})") from exc
        examples.append(record_to_example(rec, path, lineno, require_response))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DatasetError(path, None, "the file holds no records")
    return examples


def check_jsonl(path: Path, require_response: bool = True) -> int:
    """Validate a dataset file without keeping it; returns the number of records."""
    return len(read_jsonl(path, require_response))


def write_jsonl(path: Path, records: Iterable[dict[str, Any] | Example]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            obj = rec.to_record() if isinstance(rec, Example) else rec
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
