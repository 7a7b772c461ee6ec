"""Logging configuration, called once by each entry point (never by library code)."""

from __future__ import annotations

import logging
import os


def configure(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 0 else logging.INFO
    level_name = os.environ.get("SLMOPS_LOG_LEVEL")
    if level_name:
        level = getattr(logging, level_name.upper(), level)
    try:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
        fmt = "%(name)s: %(message)s"
    except ImportError:  # pragma: no cover
        handler = logging.StreamHandler()
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    for noisy in ("grpc", "urllib3", "httpx", "apscheduler.executors.default", "uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
