"""`slmops models list|show NAME:VERSION|verify [NAME[:VERSION]]|prune [--keep N] [--dry-run]`."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from controller.cli.common import add_connection_flags, ago, connect, console, count_arg
from controller.cli.output import add_output_flags, as_data, emit
from shared.errors import InvalidArgument

# (metric, column title, format): the figures `models show` puts in the variants table; every other metric
# goes to a second table with one row per metric and one column per variant, which fits any terminal.
HEADLINE_METRICS = (
    ("accuracy", "accuracy", "{:.1%}"),
    ("holdout_accuracy", "hold-out", "{:.1%}"),
    ("json_validity", "JSON ok", "{:.1%}"),
    ("tokens_per_s", "tok/s", "{:.0f}"),
    ("ttft_ms_mean", "TTFT ms", "{:.1f}"),
    ("latency_ms_mean", "latency ms", "{:.1f}"),
    ("footprint_bytes", "footprint MB", "MB"),
    ("peak_rss_bytes", "peak RSS MB", "MB"),
)


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="action", required=True)
    p = models.add_parser("list", help="model versions and their variants")
    p.add_argument("--name", default="")
    add_output_flags(p)
    add_connection_flags(p)
    p.set_defaults(func=models_list)
    p = models.add_parser("show", help="one version: variants, metrics, lineage")
    p.add_argument("ref", help="NAME:VERSION")
    add_output_flags(p)
    add_connection_flags(p)
    p.set_defaults(func=models_show)
    p = models.add_parser(
        "verify",
        help="re-hash every blob the registry serves (or one model's / version's): corrupt or missing ones; "
        "exit status 1 when any",
    )
    p.add_argument("ref", nargs="?", default="", help="NAME or NAME:VERSION (default: every model)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait (large registries take long)")
    add_connection_flags(p)
    p.set_defaults(func=models_verify)
    p = models.add_parser(
        "prune",
        help="remove blobs no kept version references (never one a device runs or a rollback needs)",
    )
    p.add_argument("--keep", type=count_arg, default=0, help="newest versions to keep per model (default 0: all)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    p.add_argument("--min-age", type=int, default=3600, help="never remove a blob stored less than S seconds ago")
    add_connection_flags(p)
    p.set_defaults(func=models_prune)


def parse_ref(text: str):  # type: ignore[no-untyped-def]
    from shared.pb import common_pb2

    name, sep, version = text.partition(":")
    if not sep or not name or not version:
        raise InvalidArgument(f"'{text}' is not NAME:VERSION (see `slmops models list`)")
    return common_pb2.ModelRef(name=name, version=version)


def models_list(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    models = list(connect(args)("ListModels", admin_pb2.ListModelsRequest(name=args.name)).models)
    return emit(args, lambda: as_data(models), lambda: console.print(models_table(models)))


def models_table(models: list) -> Table:  # type: ignore[type-arg]
    table = Table(title=f"{len(models)} model version(s)")
    for col in ("model", "created", "variants", "size"):
        table.add_column(col, overflow="fold")
    for m in models:
        variants = ", ".join(f"{v.profile} ({v.precision})" for v in m.variants)
        size = sum(v.size_bytes for v in m.variants)
        table.add_row(f"{m.ref.name}:{m.ref.version}", ago(m.created_unix), variants, f"{size / 1e6:.1f} MB")
    return table


def models_show(args: argparse.Namespace) -> int:
    model = connect(args)("GetModel", parse_ref(args.ref))
    return emit(args, lambda: as_data(model), lambda: print_model(model))


def fmt_metric(value: float, spec: str) -> str:
    return f"{value / 1e6:.2f}" if spec == "MB" else spec.format(value)


def variants_table(variants: list) -> Table:  # type: ignore[type-arg]
    """One row per variant: what it is and the headline figures that any of them has."""
    shown = [(k, title, spec) for k, title, spec in HEADLINE_METRICS if any(k in v.metrics for v in variants)]
    table = Table(title="variants")
    for col in ("profile", "precision", "EP", "files", "size"):
        table.add_column(col, overflow="fold")
    for _, title, _ in shown:
        table.add_column(title, justify="right", overflow="fold")
    for v in variants:
        table.add_row(
            v.profile,
            v.precision,
            v.execution_provider,
            str(len(v.files)),
            f"{v.size_bytes / 1e6:.2f} MB",
            *[fmt_metric(v.metrics[k], spec) if k in v.metrics else "-" for k, _, spec in shown],
        )
    return table


def metrics_table(variants: list) -> Table | None:  # type: ignore[type-arg]
    """The other metrics, transposed: a row per metric, a column per variant (None when there are none)."""
    headline = {k for k, _, _ in HEADLINE_METRICS}
    names = sorted({k for v in variants for k in v.metrics} - headline)
    if not names:
        return None
    table = Table(title="all other metrics")
    table.add_column("metric", overflow="fold")
    for v in variants:
        table.add_column(f"{v.profile}", justify="right", overflow="fold")
    for name in names:
        table.add_row(name, *[f"{v.metrics[name]:.4g}" if name in v.metrics else "-" for v in variants])
    return table


def print_model(model) -> None:  # type: ignore[no-untyped-def]
    console.print(f"[bold]{model.ref.name}:{model.ref.version}[/] (job {model.job_id or '-'})")
    variants = list(model.variants)
    console.print(variants_table(variants))
    others = metrics_table(variants)
    if others is not None:
        console.print(others)
    if model.lineage_json:
        console.print("lineage:", json.dumps(json.loads(model.lineage_json), indent=2), highlight=False)


def models_verify(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    name, _, version = args.ref.partition(":")
    if args.ref and (not name or (":" in args.ref and not version)):
        raise InvalidArgument(f"'{args.ref}' is not NAME or NAME:VERSION (see `slmops models list`)")
    request = admin_pb2.VerifyModelsRequest(name=name, version=version)
    result = connect(args)("VerifyModels", request, timeout=args.timeout)
    scope = args.ref or "every model"
    checked = (
        f"{result.blobs_checked} blob(s), {result.bytes_checked / 1e6:.1f} MB of {result.variants_checked} variant(s)"
    )
    if not result.problems:
        console.print(f"[green]ok[/]: {scope}: {checked} match their signed manifests")
        return 0
    table = Table(title=f"{scope}: {len(result.problems)} problem(s) in {checked}")
    for col in ("problem", "blob", "used by", "detail"):
        table.add_column(col)
    for p in result.problems:
        table.add_row(p.kind, p.sha256[:16] or "-", "\n".join(p.used_by), p.detail)
    console.print(table)
    console.print(
        "restore the files from the build output (or republish the version); agents refuse what fails its check"
    )
    return 1


def models_prune(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    request = admin_pb2.PruneBlobsRequest(keep=args.keep, dry_run=args.dry_run, min_age_s=max(1, args.min_age))
    result = connect(args)("PruneBlobs", request, timeout=3600.0)
    verb = "would remove" if result.dry_run else "removed"
    for ref in result.removed_versions:
        console.print(f"{verb} version {ref}")
    for blob in result.removed:  # whole digests, one a line (no table: narrow terminals would cut them)
        console.print(f"{verb} blob {blob.sha256} ({blob.size} bytes)", soft_wrap=True)
    console.print(f"{verb} {len(result.removed)} blob(s), {result.bytes_freed / 1e6:.1f} MB; kept {result.kept}")
    return 0
