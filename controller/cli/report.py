"""`slmops report [--since 24h] [--html out.html] [--png DIR]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from controller.cli.common import add_connection_flags, connect, console
from shared.errors import InvalidArgument

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    try:
        return float(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else float(text)
    except (ValueError, IndexError) as exc:
        raise InvalidArgument(f"--since '{text}' is not a duration like 30m, 24h or 7d") from exc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="fleet report: terminal summary, HTML with plots, PNG files")
    p.add_argument("--since", default="24h", help="period covered, e.g. 30m, 24h, 7d")
    p.add_argument("--html", default="", help="write a self-contained HTML report here")
    p.add_argument("--png", default="", help="write the plots as PNG files into this directory")
    add_connection_flags(p)
    p.set_defaults(func=report)


def report(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    request = admin_pb2.ReportRequest(since_s=parse_duration(args.since), html=bool(args.html), png=bool(args.png))
    response = connect(args)("RenderReport", request, timeout=300)
    console.print(response.summary_text)
    if args.html:
        Path(args.html).write_bytes(response.html)
        console.print(f"HTML report: {Path(args.html).resolve()}")
    if args.png:
        out = Path(args.png)
        out.mkdir(parents=True, exist_ok=True)
        for name, data in response.pngs.items():
            (out / name).write_bytes(data)
        console.print(f"{len(response.pngs)} plot(s) in {out.resolve()}")
    return 0
