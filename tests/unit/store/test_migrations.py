from __future__ import annotations

from sqlalchemy import inspect, text

from controller.store.db import Store
from controller.store.tables import Device


def test_migrations_apply_once_and_keep_data(db_url: str) -> None:
    store = Store(db_url)
    with store.session() as s:
        s.add(Device(agent_id="a1", hostname="h1", profile="cpu-int4"))
    store.close()
    again = Store(db_url)  # a restart: nothing re-applied, nothing lost
    with again.session() as s:
        assert s.get(Device, "a1").hostname == "h1"
        rows = s.exec(text("SELECT count(*) FROM slmops_schema_migrations")).one()  # type: ignore[call-overload]
        assert rows[0] >= 1
    assert "device" in inspect(again.engine).get_table_names()
    again.close()
