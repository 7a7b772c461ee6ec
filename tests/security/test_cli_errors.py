"""The admin CLI against a real controller: bad arguments and wrong connection settings say what to check."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli.main import main
from controller.core.tls import load_or_create


def _cli(controller, *args: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [*args, "--controller", controller.address, "--data-dir", str(controller.app.settings.data_dir)]


def test_negative_ttl_is_an_argument_error_not_a_traceback(controller, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(_cli(controller, "tokens", "create", "--ttl", "-5"))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --ttl: -5 seconds is out of range: give 0 to 4294967295" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit):
        main(_cli(controller, "tokens", "create", "--max-uses", "many"))
    assert "'many' is not a whole number of uses" in capsys.readouterr().err


def test_wrong_ca_names_the_flag_to_check(controller, tmp_path: Path, capsys) -> None:
    other = load_or_create(tmp_path / "other-tls", [])
    assert main(_cli(controller, "devices", "list", "--ca-cert", str(other.ca_path))) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "TLS handshake with the controller" in err and "Check --ca-cert" in err
    assert str(other.ca_path) in err


def test_plaintext_to_the_tls_port_says_drop_insecure(controller, capsys) -> None:
    assert main(_cli(controller, "devices", "list", "--insecure")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "it serves TLS. Drop --insecure and pass --ca-cert" in err


def test_tls_to_a_plaintext_controller_says_pass_insecure(controller_factory, tmp_path: Path, capsys) -> None:
    server = controller_factory(tmp_path / "plain", insecure=True)
    ca = load_or_create(tmp_path / "tls", []).ca_path
    assert main(_cli(server, "devices", "list", "--ca-cert", str(ca))) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "does not speak TLS" in err and "pass --insecure" in err


def test_nothing_listening_names_the_address(capsys) -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["devices", "list", "--controller", f"127.0.0.1:{port}", "--insecure"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"nothing listens at 127.0.0.1:{port}" in err


def test_connection_error_is_one_line_naming_the_address_and_its_source(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("SLMOPS_CONTROLLER", f"127.0.0.1:{port}")
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal still gets one line
    assert main(["jobs", "list", "--insecure"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"nothing listens at 127.0.0.1:{port} (from SLMOPS_CONTROLLER)" in err
    # the streaming call (`jobs show --follow`) says the same instead of a gRPC traceback
    assert main(["jobs", "show", "j1", "--follow", "--insecure", "--controller", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"nothing listens at 127.0.0.1:{port} (from --controller)" in err and err.count("\n") == 1
    monkeypatch.delenv("SLMOPS_CONTROLLER")
    from controller.cli.common import address_and_source

    assert address_and_source(type("A", (), {"controller": None})())[1].startswith("the default")
