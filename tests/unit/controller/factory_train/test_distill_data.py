"""Stage distill-data: a local teacher folder, and a real local OpenAI-compatible HTTP endpoint."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from controller.factory.stage import get_stage
from controller.factory.tasks import read_jsonl, write_jsonl
from controller.factory.teacher import TeacherUnavailable
from shared.errors import ConfigError, FailedPrecondition, RecipeError


class FakeOpenAI:
    """A tiny /v1/chat/completions server answering with the reference response for each prompt."""

    def __init__(self, answers: dict[str, str], fail_first: int = 0) -> None:
        self.answers, self.fail_first = answers, fail_first
        self.chat_requests = 0
        self.auth: list[str | None] = []
        self.roles: list[list[str]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_a: object) -> None:
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "big-teacher"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.chat_requests += 1
                    outer.auth.append(self.headers.get("Authorization"))
                    outer.roles.append([m["role"] for m in body["messages"]])
                    failing = outer.chat_requests <= outer.fail_first
                if failing:
                    self._send(503, {"error": "warming up"})
                    return
                prompt = body["messages"][-1]["content"]
                answer = outer.answers.get(prompt, "{}")
                self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prompts(tmp_path: Path, task_data: dict[str, Path]) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", read_jsonl(task_data["train"], limit=24))


@pytest.fixture
def server(prompts: Path) -> Iterator[FakeOpenAI]:
    answers = {e.prompt: e.response or "" for e in read_jsonl(prompts)}
    srv = FakeOpenAI(answers, fail_first=2)
    yield srv
    srv.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_teacher_batches_retries_and_caches(
    server: FakeOpenAI, prompts: Path, make_ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEACHER_KEY", "sk-test")
    stage = get_stage("distill-data")
    raw = {
        "prompts": str(prompts),
        "endpoint": {
            "base_url": server.base_url,
            "model": "big-teacher",
            "api_key_env": "TEACHER_KEY",
            "concurrency": 4,
            "backoff_s": 0.01,
        },
        "task": "smart-building",
        "system_prompt": "Reply with one line of JSON.",
    }
    config = stage.parse_config(raw)
    stage.validate(config, {})
    res = stage.run(config, make_ctx(name="a"))
    out = read_jsonl(res.outputs["dataset"])
    assert len(out) == 24 and res.metrics["teacher_exact_match"] == 1.0
    assert server.chat_requests == 24 + 2  # two 503s retried
    assert set(server.auth) == {"Bearer sk-test"}
    assert server.roles[-1] == ["system", "user"]
    assert [m["role"] for m in out[0].messages] == ["user"]
    # A second run (new work dir, same shared cache) asks nothing.
    res2 = stage.run(config, make_ctx(name="b"))
    assert server.chat_requests == 26
    assert res2.metrics["cache_hits"] == 24 and res2.metrics["requests"] == 0
    assert read_jsonl(res2.outputs["dataset"])[0].response == out[0].response


def test_endpoint_down_fails_validation_naming_url(prompts: Path, make_ctx) -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    stage = get_stage("distill-data")
    config = stage.parse_config({"prompts": str(prompts), "endpoint": {"base_url": url, "model": "m"}})
    with pytest.raises(TeacherUnavailable, match=url.replace(".", r"\.")):
        stage.validate(config, {})
    # Without the validation probe, the first call fails the same way (no long retry loop).
    config = stage.parse_config(
        {"prompts": str(prompts), "endpoint": {"base_url": url, "model": "m", "probe_at_validation": False}}
    )
    stage.validate(config, {})
    with pytest.raises(TeacherUnavailable, match="not reachable"):
        stage.run(config, make_ctx())


def test_missing_api_key_variable_fails_validation(prompts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    stage = get_stage("distill-data")
    config = stage.parse_config(
        {
            "prompts": str(prompts),
            "endpoint": {"base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": "NO_SUCH_KEY_VAR"},
        }
    )
    with pytest.raises(FailedPrecondition, match="NO_SUCH_KEY_VAR"):
        stage.validate(config, {})


def test_local_teacher_answers_every_prompt(tiny_hf_model: Path, prompts: Path, make_ctx) -> None:
    stage = get_stage("distill-data")
    config = stage.parse_config(
        {
            "prompts": "train",
            "teacher": "train-teacher.model",
            "max_new_tokens": 8,
            "drop_empty": False,
            "batch_size": 10,
            "system_prompt": "Answer with JSON.",
        }
    )
    stage.validate(config, {})
    ctx = make_ctx({"train": prompts, "train-teacher.model": tiny_hf_model})
    res = stage.run(config, ctx)
    out = read_jsonl(res.outputs["dataset"], require_response=False)
    # The system prompt instructs the teacher only; the student learns to answer the bare prompt.
    assert len(out) == 24 and [m["role"] for m in out[0].messages] == ["user"]
    assert json.loads(res.outputs["dataset"].read_text().splitlines()[0])["reference"].startswith('{"intent"')
    assert [p.step for p in ctx.extras["seen"] if p.total_steps == 24][-1] == 24


def test_validation_errors(tmp_path: Path, tiny_hf_model: Path) -> None:
    stage = get_stage("distill-data")
    with pytest.raises(ConfigError, match=r"exactly one of .teacher."):
        stage.parse_config({"prompts": "train"})
    missing = tmp_path / "nope"
    config = stage.parse_config({"prompts": "train", "teacher": str(missing)})
    with pytest.raises(RecipeError, match=f"model folder '{missing}' does not exist"):
        stage.validate(config, {})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    config = stage.parse_config({"prompts": str(bad), "teacher": str(tiny_hf_model)})
    with pytest.raises(Exception, match=rf"{bad}:2: missing field 'prompt'"):
        stage.validate(config, {})
