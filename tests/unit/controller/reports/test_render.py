from __future__ import annotations

import base64
import re

import pytest

from controller.reports import render_report
from controller.reports.pb import report_to_pb
from controller.store.db import Store
from controller.store.tables import Device, DriftEventRow, Job, Rollout, TelemetryWindowRow

NOW = 1_800_000_000.0
PNG = b"\x89PNG\r\n\x1a\n"


def populate(store: Store) -> None:
    with store.session() as s:
        s.add(
            Device(
                agent_id="a1",
                hostname="kiosk-1",
                profile="cpu-int4",
                last_seen=NOW - 5,
                healthy=True,
                installed_name="assistant",
                installed_version="2",
            )
        )
        s.add(
            Device(
                agent_id="a2",
                hostname="kiosk-2",
                profile="cpu-int4",
                last_seen=NOW - 10,
                installed_name="assistant",
                installed_version="1",
            )
        )
        s.add(
            Device(
                agent_id="a3",
                hostname="lab-1",
                profile="cpu-fp32",
                last_seen=NOW - 3600,
                installed_name="assistant",
                installed_version="1",
            )
        )
        for i in range(40):
            t = NOW - 3000 + 60 * i
            version = "1" if i < 20 else "2"
            for agent, req, p95 in (("a1", 100, 50.0), ("a2", 300, 90.0)):
                s.add(
                    TelemetryWindowRow(
                        agent_id=agent,
                        profile="cpu-int4",
                        model_name="assistant",
                        model_version=version,
                        start_unix=t - 60,
                        end_unix=t,
                        request_count=req,
                        error_count=req // 100,
                        latency_p50_ms=p95 / 2,
                        latency_p95_ms=p95,
                        latency_p99_ms=p95 * 1.2,
                        tokens_per_s=100.0,
                        format_validity=0.98 if i < 25 else 0.7,
                        prompt_nll=2.0,
                    )
                )
        s.add(
            TelemetryWindowRow(
                agent_id="a3",
                profile="cpu-fp32",
                model_name="assistant",
                model_version="1",
                end_unix=NOW - 600,
                request_count=10,
                latency_p95_ms=30.0,
            )
        )
        # too old for a 1h report:
        s.add(
            TelemetryWindowRow(
                agent_id="a3",
                profile="cpu-fp32",
                model_name="assistant",
                model_version="1",
                end_unix=NOW - 7200,
                request_count=1000,
                latency_p95_ms=9999.0,
            )
        )
        s.add(
            DriftEventRow(
                event_id="ev1",
                profile="cpu-int4",
                model_name="assistant",
                model_version="2",
                kind="quality",
                detector="page_hinkley",
                metric="format_validity",
                statistic=11.2,
                threshold=10.0,
                detected_at=NOW - 1200,
                action="retrain",
                job_id="job-7",
            )
        )
        s.add(
            Job(
                job_id="job-7",
                kind="retrain",
                state="SUCCEEDED",
                created_at=NOW - 1190,
                drift_event_id="ev1",
                result_name="assistant",
                result_version="3",
            )
        )
        s.add(Job(job_id="job-1", kind="build", state="SUCCEEDED", created_at=NOW - 3500))
        s.add(
            Rollout(
                rollout_id="r1",
                model_name="assistant",
                model_version="2",
                state="COMPLETED",
                created_at=NOW - 1800,
                updated_at=NOW - 1700,
            )
        )


def test_summary_figures_on_both_backends(store: Store) -> None:
    populate(store)
    report = render_report(store, since_s=3600, html=False, png=False, now=NOW)
    text = report.summary_text
    assert report.html is None and report.pngs == {}
    assert "last 1h" in text and "Fleet: 3 devices, 2 online, 1 offline" in text
    assert "cpu-int4: assistant:1 x1, assistant:2 x1" in text and "cpu-fp32: assistant:1 x1" in text
    row = next(line for line in text.splitlines() if "cpu-int4" in line and "assistant:1" in line and "%" in line)
    # request-weighted p95 over a1 (100 req, 50 ms) and a2 (300 req, 90 ms) = 80 ms; errors 1 per 100
    assert re.search(r"\b2\s+8000\s+40\.0\s+80\.0\s+96\.0\s+100\.0\s+1\.00%\s+0\.980\s*$", row), row
    assert "prompt nll" not in text  # retired: it carried no information
    assert "9999" not in text  # outside the period
    assert "Drift events: 1" in text and "ev1" in text and "11.2 > 10" in text and "job-7" in text
    assert "Retrain / re-optimize jobs: 1 (all jobs in the period: 2)" in text
    assert "Rollouts: 1" in text and "r1" in text


def test_html_and_pngs_with_data(sqlite_store: Store) -> None:
    populate(sqlite_store)
    report = render_report(sqlite_store, since_s=3600, html=True, png=True, now=NOW)
    assert set(report.pngs) == {"latency.png", "throughput.png", "quality.png"}
    assert all(p.startswith(PNG) and len(p) > 10_000 for p in report.pngs.values())
    page = (report.html or b"").decode()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(PNG) for i in images)
    assert not re.search(r'(src|href)="(?!data:)', page)  # self-contained: no external assets
    assert "kiosk-1" in page and 'class="online"' in page and 'class="offline"' in page
    assert "ev1" in page and "job-7" in page and "r1" in page
    pb = report_to_pb(report)
    assert pb.html == report.html and set(pb.pngs) == set(report.pngs)


def test_empty_database_says_no_telemetry_yet(store: Store) -> None:
    report = render_report(store, since_s=86400, html=True, png=True)
    assert "no telemetry yet" in report.summary_text and "Fleet: 0 devices" in report.summary_text
    assert report.pngs == {}
    page = (report.html or b"").decode()
    assert "no telemetry yet" in page and "<img" not in page and page.rstrip().endswith("</html>")


@pytest.mark.parametrize("since", [60.0, 86400.0 * 7])
def test_period_is_reported_in_plain_units(sqlite_store: Store, since: float) -> None:
    text = render_report(sqlite_store, since_s=since, html=False, png=False, now=NOW).summary_text
    assert text.startswith(f"slmops report: last {'1m' if since == 60 else '7d'}")
