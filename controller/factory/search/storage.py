"""Where a search's optuna study lives: beside the controller's database, never in its tables.

Optuna's RDB storage keeps its schema version in a table named ``alembic_version``, the same name the
controller's own migrations use (``controller/store/migrations``); sharing one schema would make each side read
the other's revision and refuse to start. So:

- SQLite controller (``sqlite:///DATA/controller.db``): a second file next to it, ``DATA/search.db``. SQLite has
  no schemas, and keeping trials out of ``controller.db`` also keeps trial writes from contending with the
  controller's own writes on the one SQLite writer lock;
- PostgreSQL controller: the same database, in its own schema (``<schema>_optuna``, ``slmops_optuna`` when the
  URL sets no ``search_path``), created if missing.

A remote trial (a Ray worker) reaches the study through the same URL, so trials report intermediate values
and the pruner reads the other trials from the database. A study is named after the step, its search config and
its inputs (:func:`study_name`; the jobs that ran it are in the study's ``jobs`` attribute) and opened with
``load_if_exists``: the job resubmitted after a controller restart continues the same study.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from shared.errors import ConfigError

SEARCH_DB = "search.db"
SCHEMA_SUFFIX = "_optuna"


def _search_path(query: dict[str, str]) -> str:
    match = re.search(r"search_path\s*=\s*([A-Za-z0-9_]+)", query.get("options", ""))
    return match.group(1) if match else ""


def study_storage_url(db_url: str, fallback_dir: Path) -> str:
    """The optuna storage URL for a controller database URL (see the module doc); ``fallback_dir`` holds a
    ``search.db`` when there is no database URL (a pipeline run outside a controller)."""
    if not db_url:
        return f"sqlite:///{(Path(fallback_dir) / SEARCH_DB).resolve()}"
    if db_url.startswith("sqlite"):
        path = db_url.split(":///", 1)[-1]
        if not path or path == ":memory:":
            return f"sqlite:///{(Path(fallback_dir) / SEARCH_DB).resolve()}"
        return f"sqlite:///{Path(path).resolve().parent / SEARCH_DB}"
    if db_url.startswith(("postgres://", "postgresql")):
        parts = urlsplit(db_url)
        scheme = "postgresql+psycopg" if parts.scheme in ("postgres", "postgresql") else parts.scheme
        query = dict(parse_qsl(parts.query))
        schema = (_search_path(query) or "slmops") + SCHEMA_SUFFIX
        query["options"] = f"-csearch_path={schema}"
        return urlunsplit((scheme, parts.netloc, parts.path, urlencode(query, quote_via=quote), parts.fragment))
    raise ConfigError("search", "storage", f"unsupported database URL '{db_url}' for a search study")


def prepare_storage(url: str) -> None:
    """Create what the storage URL needs before optuna opens it (the PostgreSQL schema, the SQLite folder)."""
    if url.startswith("sqlite"):
        Path(url.split(":///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
        return
    schema = _search_path(dict(parse_qsl(urlsplit(url).query)))
    if not schema:
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    finally:
        engine.dispose()


def open_storage(url: str) -> Any:
    """An optuna RDBStorage on ``url`` (SQLite waits for the lock instead of failing)."""
    import optuna

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
    else:
        kwargs["pool_pre_ping"] = True
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def study_name(step_id: str, search_config: dict[str, Any], inputs: dict[str, str]) -> str:
    """``slmops.<step>.<hash>``: one study per search configuration and inputs (``input_identity``). A job
    interrupted by a controller restart is resubmitted as a new job; its search step has the same configuration
    and inputs (the finished stages before it come from the cache), so it continues the same study. The budget
    is left out of the hash: a rerun with a larger budget continues the study too."""
    search_config = {**search_config, "search": {**search_config.get("search", {}), "budget": None}}
    blob = json.dumps({"config": search_config, "inputs": inputs}, sort_keys=True, default=str)
    safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", step_id or "search")
    return f"slmops.{safe}.{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def input_identity(paths: dict[str, str]) -> dict[str, str]:
    """What identifies each input without hashing model weights: a file's content digest; for a folder, its
    files' names and sizes plus the content of its small JSON files (config, tokenizer)."""
    out = {}
    for name, raw in sorted(paths.items()):
        path, digest = Path(raw), hashlib.sha256()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            small = f.suffix == ".json" and f.stat().st_size < 4 * 2**20
            digest.update(f"{f.relative_to(path) if path.is_dir() else ''}:{f.stat().st_size}\n".encode())
            if small or not path.is_dir():
                digest.update(f.read_bytes())
        out[name] = digest.hexdigest()
    return out


def redact(url: str) -> str:
    """``url`` without a password (for summaries and logs)."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
