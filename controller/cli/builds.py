"""`slmops build RECIPE [--follow | --plan]` and `slmops jobs list|show|cancel`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from controller.cli.common import add_connection_flags, ago, connect, console, count_arg, ref
from controller.cli.follow import stage_label, state_name, watch
from controller.cli.output import add_output_flags, as_data, emit
from controller.cli.summary import print_summary
from shared.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="submit a build recipe (YAML) to the controller")
    p.add_argument("recipe", help="recipe file, e.g. examples/recipes/demo.yaml")
    p.add_argument("--follow", "-f", action="store_true", help="show live progress until the job ends")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the plan (steps, inputs, outputs, resources, cache keys) here and submit nothing",
    )
    p.add_argument("--format", choices=("table", "json", "yaml"), default="table", help="with --plan: the output")
    p.add_argument("--profiles-dir", default=None, help="with --plan: device profiles to plan for (default: bundled)")
    add_connection_flags(p)
    p.set_defaults(func=build)

    jobs = sub.add_parser("jobs", help="build and retrain jobs").add_subparsers(dest="action", required=True)
    p = jobs.add_parser("list", help="jobs, newest first")
    p.add_argument("--limit", type=count_arg, default=20)
    add_output_flags(p)
    add_connection_flags(p)
    p.set_defaults(func=jobs_list)
    p = jobs.add_parser("show", help="one job; --follow shows live progress")
    p.add_argument("job_id")
    p.add_argument("--follow", "-f", action="store_true")
    add_output_flags(p)
    add_connection_flags(p)
    p.set_defaults(func=jobs_show)
    p = jobs.add_parser("cancel", help="cancel a queued or running job (the registry stays as it was)")
    p.add_argument("job_id")
    add_connection_flags(p)
    p.set_defaults(func=jobs_cancel)


def build(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    path = Path(args.recipe)
    if not path.is_file():
        raise ConfigError(str(path), "", "recipe file does not exist")
    if args.plan:
        return print_plan(path, args)
    conn = connect(args)
    job = conn(
        "SubmitBuild", admin_pb2.SubmitBuildRequest(recipe_yaml=path.read_text(), recipe_path=str(path.resolve()))
    )
    console.print(f"submitted job [bold]{job.job_id}[/] ({(len(job.message) and job.message) or 'queued'})")
    return follow(conn, job.job_id) if args.follow else 0


def print_plan(path: Path, args: argparse.Namespace) -> int:
    """The recipe's plan, made here (no controller): what `build` would run, with each step's cache key."""
    from controller.factory.plan import ROW_HEADERS, plan_file

    plan = plan_file(path, Path(args.profiles_dir) if args.profiles_dir else None)
    if args.format != "table":
        print(plan.to_json() if args.format == "json" else plan.to_yaml().rstrip("\n"))
        return 0
    from rich.text import Text

    table = Table(title=f"plan for {plan.name}: {len(plan.steps)} steps (nothing submitted)")
    for col in ROW_HEADERS:
        table.add_column(col, overflow="fold")
    for row in plan.rows():
        table.add_row(*(Text(cell) for cell in row))  # paths and refs are not markup
    console.print(table)
    console.print(f"plan hash {plan.hash[:16]}; cache keys as the controller computes them for the same files")
    return 0


def follow(conn, job_id: str, plain: bool | None = None) -> int:  # type: ignore[no-untyped-def]
    """Live progress (bars on a terminal, log lines elsewhere: see follow.py); returns 0 when the job succeeded."""
    from shared.pb import admin_pb2

    last = watch(conn.stream("WatchJob", admin_pb2.GetJobRequest(job_id=job_id)), plain)
    if last is None:
        return 1
    print_job(last)
    return 0 if last.state == admin_pb2.JOB_STATE_SUCCEEDED else 1


def print_job(job) -> None:  # type: ignore[no-untyped-def]
    console.print(f"job {job.job_id}: [bold]{state_name(job)}[/] {job.message}")
    if job.error:
        console.print(f"[red]error[/]: {job.error}")
    if job.result.name:
        console.print(f"published [bold]{ref(job.result)}[/]")
    if job.promotion:
        console.print(f"closed loop: {job.promotion}")
    if job.summary_json:
        print_summary(json.loads(job.summary_json))


def jobs_list(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    jobs = list(connect(args)("ListJobs", admin_pb2.ListJobsRequest(limit=args.limit)).jobs)
    return emit(args, lambda: as_data(jobs), lambda: console.print(jobs_table(jobs)))


def jobs_table(jobs: list) -> Table:  # type: ignore[type-arg]
    table = Table(title=f"{len(jobs)} job(s)")
    for col in ("id", "kind", "state", "stage", "progress", "result", "created", "message"):
        table.add_column(col, overflow="fold")
    for j in jobs:
        table.add_row(
            j.job_id,
            j.kind,
            state_name(j),
            escape(stage_label(j)) if j.stage else "-",
            f"{j.step}/{j.total_steps}" if j.total_steps else "-",
            ref(j.result),
            ago(j.created_unix),
            escape((j.error or j.message)[:50]),
        )
    return table


def jobs_show(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    conn = connect(args)
    if args.follow:
        return follow(conn, args.job_id)
    job = conn("GetJob", admin_pb2.GetJobRequest(job_id=args.job_id))
    return emit(args, lambda: as_data(job), lambda: print_job(job))


def jobs_cancel(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    job = connect(args)("CancelJob", admin_pb2.GetJobRequest(job_id=args.job_id))
    print_job(job)
    return 0
