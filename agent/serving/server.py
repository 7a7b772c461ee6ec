"""Run the serving app with uvicorn on a background thread (``start``/``stop``), e.g. inside the agent."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import uvicorn

from agent.serving.app import create_app
from agent.serving.limits import protocol_with_deadline
from agent.serving.service import Serving
from shared.errors import Unavailable

log = logging.getLogger(__name__)


class ServingServer:
    """``ServingServer(serving).start()`` binds ``serving.config.host:port`` (port 0 = any free port)."""

    def __init__(self, serving: Serving, *, host: str | None = None, port: int | None = None) -> None:
        self.serving = serving
        self.host = host or serving.config.host
        self.port = serving.config.port if port is None else port
        self.app = create_app(serving)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the OpenAI-compatible API, e.g. ``http://127.0.0.1:8080/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> str:
        if self._thread is not None:
            return self.url
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # idle connections: closed after this or read_timeout_s, whichever is shorter (limits.py)
            timeout_keep_alive=30,
            timeout_graceful_shutdown=5,
            http=protocol_with_deadline(self.serving.config.read_timeout_s, httptools=_has("httptools")),
            loop="uvloop" if _has("uvloop") else "asyncio",
        )
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._server = server
        self._thread = threading.Thread(target=self._run, name="serving-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise Unavailable(f"the serving API did not start on {self.host}:{self.port} (port in use?)")
            time.sleep(0.01)
        if self.port == 0:
            self.port = server.servers[0].sockets[0].getsockname()[1]
        log.info("serving API listening on %s", self.url)
        return self.url

    def _run(self) -> None:
        assert self._server is not None
        asyncio.run(self._server.serve())

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting requests, then stop the workers (models stay loaded in ``serving.slot``)."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(2.0)
        self._server, self._thread = None, None
        log.info("serving API stopped")

    def __enter__(self) -> ServingServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True
