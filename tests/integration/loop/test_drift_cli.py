"""`slmops drift list/show` through the real AdminService: stored drift events, newest first, with evidence."""

from __future__ import annotations

import json
import time

import pytest

from controller.cli.main import main
from controller.store.tables import DriftEventRow
from shared.pb import admin_pb2
from tests.fixtures.controller import admin


def _event(event_id: str, profile: str, at: float) -> DriftEventRow:
    return DriftEventRow(
        event_id=event_id,
        profile=profile,
        model_name="smart-building-demo",
        model_version="1",
        kind="input",
        detector="ks",
        metric="prompt_length",
        statistic=0.61,
        threshold=0.3,
        detected_at=at,
        action="retrain",
        job_id="j-retrain",
        evidence_json=json.dumps({"windows": 3, "p_value": 0.001}),
    )


def test_drift_events_over_admin_api_and_cli(controller, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    with controller.app.store.session() as s:
        s.add(_event("drift-old", "cpu-int4", now - 60))
        s.add(_event("drift-new", "cpu-fp32", now))
    conn = admin(controller)
    listed = conn("ListDriftEvents", admin_pb2.ListDriftEventsRequest()).events  # type: ignore[attr-defined]
    assert [e.event_id for e in listed] == ["drift-new", "drift-old"]
    only = conn("ListDriftEvents", admin_pb2.ListDriftEventsRequest(profile="cpu-int4")).events  # type: ignore[attr-defined]
    assert [e.event_id for e in only] == ["drift-old"]
    one = conn("GetDriftEvent", admin_pb2.DriftEventRequest(event_id="drift-old"))
    assert json.loads(one.evidence_json) == {"p_value": 0.001, "windows": 3}  # type: ignore[attr-defined]
    assert (one.kind, one.detector, one.job_id) == ("input", "ks", "j-retrain")  # type: ignore[attr-defined]

    data_dir = str(controller.app.settings.data_dir)
    flags = ["--controller", controller.address, "--data-dir", data_dir]
    assert main(["drift", "list", *flags]) == 0
    out = capsys.readouterr().out
    assert "drift-new" in out and "drift-old" in out and "cpu-int4" in out
    assert main(["drift", "show", "drift-old", *flags]) == 0
    out = capsys.readouterr().out
    assert "prompt_length" in out and "audited accuracy: not audited" in out and "p_value" not in out
    assert main(["drift", "show", "drift-old", "--json", *flags]) == 0
    assert "p_value" in capsys.readouterr().out
    assert main(["drift", "show", "drift-missing", *flags]) != 0
    assert "drift-missing" in capsys.readouterr().err
