"""`slmops models list|show NAME:VERSION`."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from controller.cli.common import add_connection_flags, ago, connect, console
from shared.errors import InvalidArgument

HEADLINE_METRICS = ("accuracy", "json_validity", "tokens_per_s", "ttft_ms", "peak_rss_mb", "footprint_mb")


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="action", required=True)
    p = models.add_parser("list", help="model versions and their variants")
    p.add_argument("--name", default="")
    add_connection_flags(p)
    p.set_defaults(func=models_list)
    p = models.add_parser("show", help="one version: variants, metrics, lineage")
    p.add_argument("ref", help="NAME:VERSION")
    add_connection_flags(p)
    p.set_defaults(func=models_show)


def parse_ref(text: str):  # type: ignore[no-untyped-def]
    from shared.pb import common_pb2

    name, sep, version = text.partition(":")
    if not sep or not name or not version:
        raise InvalidArgument(f"'{text}' is not NAME:VERSION (see `slmops models list`)")
    return common_pb2.ModelRef(name=name, version=version)


def models_list(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    models = connect(args)("ListModels", admin_pb2.ListModelsRequest(name=args.name)).models
    table = Table(title=f"{len(models)} model version(s)")
    for col in ("model", "created", "variants", "size"):
        table.add_column(col)
    for m in models:
        variants = ", ".join(f"{v.profile} ({v.precision})" for v in m.variants)
        size = sum(v.size_bytes for v in m.variants)
        table.add_row(f"{m.ref.name}:{m.ref.version}", ago(m.created_unix), variants, f"{size / 1e6:.1f} MB")
    console.print(table)
    return 0


def models_show(args: argparse.Namespace) -> int:
    model = connect(args)("GetModel", parse_ref(args.ref))
    console.print(f"[bold]{model.ref.name}:{model.ref.version}[/] (job {model.job_id or '-'})")
    table = Table(title="variants")
    names = sorted({k for v in model.variants for k in v.metrics})
    ordered = [m for m in HEADLINE_METRICS if m in names] + [m for m in names if m not in HEADLINE_METRICS]
    for col in ("profile", "precision", "EP", "files", "size", *ordered):
        table.add_column(col)
    for v in model.variants:
        table.add_row(
            v.profile,
            v.precision,
            v.execution_provider,
            str(len(v.files)),
            f"{v.size_bytes / 1e6:.2f} MB",
            *[f"{v.metrics[m]:.4g}" if m in v.metrics else "-" for m in ordered],
        )
    console.print(table)
    if model.lineage_json:
        console.print("lineage:", json.dumps(json.loads(model.lineage_json), indent=2))
    return 0
