from __future__ import annotations

import pytest

from controller.rollout.gates import evaluate, parse_gate
from controller.rollout.spec import RolloutSpec, parse_fraction
from shared.errors import InvalidArgument


def test_gate_parses_clauses_percentages_and_spaces() -> None:
    clauses = parse_gate(" ttft_p95_ms <= 200, tokens_per_s>=20 ,error_rate<1% ")
    assert [(c.metric, c.op, c.threshold) for c in clauses] == [
        ("ttft_p95_ms", "<=", 200.0),
        ("tokens_per_s", ">=", 20.0),
        ("error_rate", "<", 0.01),
    ]
    assert parse_gate("") == []


@pytest.mark.parametrize(
    ("gate", "named"),
    [
        ("ttft_p99_ms<=200", "ttft_p99_ms"),  # unknown metric
        ("ttft_p95_ms=>200", "=>"),  # unknown operator
        ("tokens_per_s==20", "=="),
        ("error_rate<=abc", "abc"),  # not a number
        ("ttft_p95_ms 200", "ttft_p95_ms 200"),  # no operator
        ("error_rate<=inf", "inf"),
    ],
)
def test_gate_errors_name_the_bad_part(gate: str, named: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_gate(gate)
    assert named in str(err.value)


def test_gate_verdicts() -> None:
    clauses = parse_gate("ttft_p95_ms<=200,tokens_per_s>=20,format_validity>=0.9")
    waiting = evaluate(clauses, {"request_count": 0, "ttft_p95_ms": 0.0})
    assert waiting.waiting and not waiting.ok and waiting.missing == ["ttft_p95_ms", "tokens_per_s", "format_validity"]
    unmeasured = evaluate(clauses, {"request_count": 5, "ttft_p95_ms": 10, "tokens_per_s": 30, "format_validity": -1})
    assert unmeasured.missing == ["format_validity"]
    bad = evaluate(clauses, {"request_count": 5, "ttft_p95_ms": 250, "tokens_per_s": 30, "format_validity": 1})
    assert not bad.ok and bad.violated == ["ttft_p95_ms<=200 measured 250"]
    good = evaluate(clauses, {"request_count": 5, "ttft_p95_ms": 200, "tokens_per_s": 20, "format_validity": 0.95})
    assert good.ok and not good.waiting


def test_fraction_parsing() -> None:
    assert parse_fraction("10%") == pytest.approx(0.1)
    assert parse_fraction("0.25") == 0.25
    assert parse_fraction(0) == 0.0
    for bad in ("150%", "-0.1", "ten", "nan"):
        with pytest.raises(InvalidArgument):
            parse_fraction(bad)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"waves": [50, 10, 100]}, "must increase"),
        ({"waves": [10, 50]}, "last wave must be 100"),
        ({"waves": [0, 100]}, "between 1 and 100"),
        ({"approve": "sometimes"}, "sometimes"),
        ({"max_failure": "200%"}, "200%"),
        ({"gate": "p95<=1"}, "p95"),
        ({"model_version": ""}, "NAME:VERSION"),
    ],
)
def test_spec_validation(changes: dict[str, object], named: str) -> None:
    fields: dict[str, object] = {"model_name": "m", "model_version": "1", **changes}
    spec = RolloutSpec(**fields)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as err:
        spec.validated()
    assert named in str(err.value)


def test_spec_normalises() -> None:
    spec = RolloutSpec(
        model_name="m",
        model_version="1",
        max_failure="10%",
        approve="MANUAL",
        gate="error_rate<=1%",
        device_timeout_s=0,
    ).validated()
    assert spec.max_failure == pytest.approx(0.1)
    assert spec.approve == "manual"
    assert spec.gate == "error_rate<=0.01"
    assert spec.device_timeout_s == 900
