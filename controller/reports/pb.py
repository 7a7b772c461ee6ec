"""Reports to protobuf, for the admin API."""

from __future__ import annotations

from controller.reports.render import Report
from shared.pb import admin_pb2


def report_to_pb(report: Report) -> admin_pb2.ReportResponse:
    return admin_pb2.ReportResponse(summary_text=report.summary_text, html=report.html or b"", pngs=report.pngs)
