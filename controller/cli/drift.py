"""`slmops drift list|show` and `slmops retrain NAME --profile P`."""

from __future__ import annotations

import argparse
import datetime as dt
import json

from rich.table import Table

from controller.cli.common import add_connection_flags, connect, console, count_arg, ref


def register(sub: argparse._SubParsersAction) -> None:
    drift = sub.add_parser("drift", help="drift events").add_subparsers(dest="action", required=True)
    p = drift.add_parser("list", help="drift events, newest first")
    p.add_argument("--profile", default="")
    p.add_argument("--limit", type=count_arg, default=50)
    add_connection_flags(p)
    p.set_defaults(func=drift_list)
    p = drift.add_parser("show", help="one drift event with its evidence (signals that moved, audited accuracy)")
    p.add_argument("event_id")
    p.add_argument("--json", action="store_true", help="also print the whole evidence as JSON")
    add_connection_flags(p)
    p.set_defaults(func=drift_show)

    p = sub.add_parser("retrain", help="retrain a model for a profile now (distill again with sampled prompts)")
    p.add_argument("model_name")
    p.add_argument("--profile", required=True)
    p.add_argument("--reason", default="manual")
    p.add_argument("--follow", "-f", action="store_true")
    add_connection_flags(p)
    p.set_defaults(func=retrain)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds") if ts else "-"


def drift_list(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    events = connect(args)(
        "ListDriftEvents", admin_pb2.ListDriftEventsRequest(profile=args.profile, limit=args.limit)
    ).events
    table = Table(title=f"{len(events)} drift event(s)")
    for col in (
        "id",
        "when",
        "profile",
        "model",
        "kind",
        "detector",
        "metric",
        "statistic",
        "threshold",
        "action",
        "job",
    ):
        table.add_column(col)
    for e in events:
        table.add_row(
            e.event_id,
            _when(e.detected_unix),
            e.profile,
            ref(e.model),
            e.kind,
            e.detector,
            e.metric,
            f"{e.statistic:.4g}",
            f"{e.threshold:.4g}",
            e.action,
            e.job_id or "-",
        )
    console.print(table)
    return 0


def drift_show(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    e = connect(args)("GetDriftEvent", admin_pb2.DriftEventRequest(event_id=args.event_id))
    console.print(
        f"[bold]{e.event_id}[/] {e.kind} drift on {e.profile} / {ref(e.model)} at {_when(e.detected_unix)}: "
        f"{e.detector} on {e.metric} = {e.statistic:.4g} (threshold {e.threshold:.4g}); action {e.action}"
        + (f", job {e.job_id}" if e.job_id else "")
    )
    if e.evidence_json:
        from rich.markup import escape

        from controller.reports.evidence import evidence_lines, parse_evidence

        evidence = parse_evidence(e.evidence_json)
        for line in evidence_lines(evidence):
            console.print(escape(line), highlight=False)
        if args.json:
            console.print_json(json.dumps(evidence))
    return 0


def retrain(args: argparse.Namespace) -> int:
    from controller.cli.builds import follow, print_job
    from shared.pb import admin_pb2

    conn = connect(args)
    job = conn(
        "TriggerRetrain",
        admin_pb2.TriggerRetrainRequest(model_name=args.model_name, profile=args.profile, reason=args.reason),
    )
    print_job(job)
    return follow(conn, job.job_id) if args.follow else 0
