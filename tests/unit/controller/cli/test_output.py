"""`--output json|yaml|table` / `--json` on list and show commands, and `models show` tables that fit."""

from __future__ import annotations

import io
import json

import yaml
from rich.console import Console

from controller.cli.main import main
from controller.cli.models import metrics_table, variants_table
from controller.cli.output import as_data
from controller.cli.summary import trials_table
from shared.pb import admin_pb2, common_pb2


def _cli(controller, *args: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [*args, "--controller", controller.address, "--data-dir", str(controller.app.settings.data_dir)]


def test_json_and_yaml_parse_and_table_stays_the_default(controller, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(_cli(controller, "profiles", "list", "--json")) == 0
    profiles = json.loads(capsys.readouterr().out)
    assert "cpu-int4" in {p["name"] for p in profiles}
    assert main(_cli(controller, "jobs", "list", "--output", "yaml")) == 0
    assert yaml.safe_load(capsys.readouterr().out) == []
    assert main(_cli(controller, "devices", "list", "-o", "json")) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(_cli(controller, "profiles", "list")) == 0
    assert "device profiles" in capsys.readouterr().out


def test_json_fields_hold_parsed_objects() -> None:
    job = admin_pb2.Job(job_id="j1", state=admin_pb2.JOB_STATE_SUCCEEDED, summary_json='{"models": [{"label": "x"}]}')
    data = as_data(job)
    assert data["summary"] == {"models": [{"label": "x"}]} and "summary_json" not in data
    assert data["state"] == "JOB_STATE_SUCCEEDED" and data["error"] == ""


def _model() -> admin_pb2.ModelVersion:
    metrics = {f"extra_metric_number_{i:02d}": float(i) for i in range(22)}
    metrics.update(accuracy=0.875, json_validity=1.0, tokens_per_s=812.0, footprint_bytes=2.5e6, holdout_accuracy=0.8)
    variants = [
        admin_pb2.Variant(profile=p, precision=p[4:], execution_provider="cpu", size_bytes=1_000_000, metrics=metrics)
        for p in ("cpu-int4", "cpu-fp32")
    ]
    return admin_pb2.ModelVersion(ref=common_pb2.ModelRef(name="m", version="1"), variants=variants)


def test_models_show_keeps_headline_columns_whole_and_transposes_the_rest() -> None:
    variants = list(_model().variants)
    console = Console(file=io.StringIO(), width=100, record=True, color_system=None)
    console.print(variants_table(variants))
    console.print(metrics_table(variants))
    text = console.export_text()
    assert all(len(line) <= 100 for line in text.splitlines())
    for header in ("accuracy", "hold-out", "JSON ok", "tok/s", "footprint"):  # headers wrap, never cut
        assert header in text
    assert "…" not in text  # nothing cut
    assert "87.5%" in text and "2.50" in text
    rows = [line for line in text.splitlines() if "extra_metric_number_" in line]
    assert len(rows) == 22 and "accuracy" not in "".join(rows)


def test_search_trials_table() -> None:
    trials = [
        {"number": 0, "params": {"learning_rate": 0.003}, "value": 0.61, "state": "COMPLETE", "duration_s": 12.4},
        {"number": 1, "params": {"learning_rate": 0.01}, "value": None, "state": "PRUNED", "duration_s": 3.0},
    ]
    console = Console(file=io.StringIO(), width=100, record=True, color_system=None)
    console.print(trials_table(trials, "accuracy", best=0))
    text = console.export_text()
    assert "2 trial(s), best #0" in text and "learning_rate=0.003" in text and "0.61" in text and "pruned" in text
    assert "accuracy" in text and "0*" in text
