"""Controller and agent settings: flags > SLMOPS_* environment > settings file > defaults, validated per source."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import AgentSettings
from controller.cli.main import main
from controller.core.settings import ControllerSettings
from shared.defaults import DEFAULT_CONTROLLER
from shared.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SLMOPS_* variable of the machine running the tests leaks into them."""
    import os

    for name in list(os.environ):
        if name.startswith("SLMOPS_"):
            monkeypatch.delenv(name)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- precedence --------------------------------------------------------------------------------------------
def test_controller_flags_over_env_over_file_over_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(
        tmp_path / "ctl.toml",
        'listen = "0.0.0.0:7001"\nmax_jobs = 3\ngrpc_workers = 8\nloop_waves = [20, 100]\n',
    )
    monkeypatch.setenv("SLMOPS_LISTEN", "0.0.0.0:7002")
    monkeypatch.setenv("SLMOPS_MAX_JOBS", "4")
    settings = ControllerSettings.load(
        {"listen": "0.0.0.0:7003"}, config_file=config, flag_names={"listen": "--listen"}
    )
    assert settings.listen == "0.0.0.0:7003" and settings.origin("listen") == "--listen"
    assert settings.max_jobs == 4 and settings.origin("max_jobs") == "SLMOPS_MAX_JOBS"
    assert settings.grpc_workers == 8 and settings.origin("grpc_workers") == str(config)
    assert settings.loop_waves == [20, 100]
    assert settings.max_downloads == 16 and settings.origin("max_downloads") == "default"
    assert ControllerSettings.load().listen == "0.0.0.0:7002"  # env over the default, no file
    assert ControllerSettings().listen == DEFAULT_CONTROLLER  # keyword construction reads no environment


def test_agent_flags_over_env_over_file_over_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(
        tmp_path / "agent.yaml", "controller: ctl.example:7000\nworkers: 3\nmax_queue: 5\nkeep_versions: 2\n"
    )
    monkeypatch.setenv("SLMOPS_CONFIG", str(config))  # the file named by the environment
    monkeypatch.setenv("SLMOPS_CONTROLLER", "ctl.example:7001")  # the old names keep working
    monkeypatch.setenv("SLMOPS_AGENT_DIR", str(tmp_path / "edge"))
    monkeypatch.setenv("SLMOPS_AGENT_WORKERS", "4")
    monkeypatch.setenv("SLMOPS_HEARTBEAT_INTERVAL_S", "99")  # the controller's variable: not the agent's
    settings = AgentSettings.load({"controller": "ctl.example:7002", "max_queue": "7"})
    assert settings.controller == "ctl.example:7002" and settings.origin("controller") == "--controller"
    assert settings.workers == 4 and settings.data_dir == tmp_path / "edge"
    assert settings.max_queue == 7 and settings.keep_versions == 2 and settings.origin("keep_versions") == str(config)
    assert settings.heartbeat_interval_s == 0.0 and settings.read_timeout_s == 15.0


def test_lists_from_env_are_comma_separated_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLMOPS_TLS_HOSTS", "ctl.example, 10.0.0.2")
    monkeypatch.setenv("SLMOPS_LOOP_WAVES", "[25, 50, 100]")
    settings = ControllerSettings.load()
    assert settings.tls_hosts == ["ctl.example", "10.0.0.2"] and settings.loop_waves == [25, 50, 100]


def test_a_shared_file_has_a_table_per_process(tmp_path: Path) -> None:
    config = write(
        tmp_path / "slmops.toml", '[controller]\nmax_jobs = 2\n\n[agent]\ncontroller = "ctl:1"\nworkers = 5\n'
    )
    assert ControllerSettings.load(config_file=config).max_jobs == 2
    agent = AgentSettings.load(config_file=config)
    assert agent.controller == "ctl:1" and agent.workers == 5
    bad = write(tmp_path / "mixed.toml", "max_jobs = 2\n[agent]\nworkers = 5\n")
    with pytest.raises(ConfigError) as info:
        ControllerSettings.load(config_file=bad)
    assert info.value.field == "max_jobs" and "tables" in info.value.reason


# --- validation names source and field ----------------------------------------------------------------------
def test_a_bad_value_names_its_source_and_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        ControllerSettings.load(
            {"heartbeat_interval_s": "0"}, flag_names={"heartbeat_interval_s": "--heartbeat-interval"}
        )
    assert str(info.value) == "--heartbeat-interval: field 'heartbeat_interval_s': must be > 0 (got '0')"

    monkeypatch.setenv("SLMOPS_HEARTBEAT_INTERVAL_S", "0")
    with pytest.raises(ConfigError, match=r"^SLMOPS_HEARTBEAT_INTERVAL_S: field 'heartbeat_interval_s': must be > 0"):
        ControllerSettings.load()
    monkeypatch.delenv("SLMOPS_HEARTBEAT_INTERVAL_S")

    config = write(tmp_path / "ctl.yaml", "loop_waves: [50, 90]\n")
    with pytest.raises(ConfigError) as info:
        ControllerSettings.load(config_file=config)
    assert (info.value.source, info.value.field) == (str(config), "loop_waves") and "end at 100" in info.value.reason

    monkeypatch.setenv("SLMOPS_SERVE_LISTEN", "8080")
    with pytest.raises(ConfigError, match=r"^SLMOPS_SERVE_LISTEN: field 'serve_listen': must be HOST:PORT"):
        AgentSettings.load()
    monkeypatch.setenv("SLMOPS_SERVE_LISTEN", "127.0.0.1:8080")
    monkeypatch.setenv("SLMOPS_AGENT_READ_TIMEOUT_S", "soon")
    with pytest.raises(ConfigError, match=r"^SLMOPS_AGENT_READ_TIMEOUT_S: field 'read_timeout_s': must be a number"):
        AgentSettings.load()


def test_gate_and_addresses_are_checked() -> None:
    with pytest.raises(ConfigError, match="field 'loop_gate': unknown gate metric 'speed'"):
        ControllerSettings.load({"loop_gate": "speed>=1"})
    with pytest.raises(ConfigError, match="field 'metrics_listen'"):
        ControllerSettings.load({"metrics_listen": "localhost"})
    assert ControllerSettings.load({"listen": "[::]:50051", "metrics_listen": ""}).listen == "[::]:50051"
    assert AgentSettings.load({"controller": "unix:/run/slmops.sock"}).controller == "unix:/run/slmops.sock"


def test_a_bad_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLMOPS_ADMIN_TOKEN", "hunter2")
    monkeypatch.setenv("SLMOPS_HEARTBEAT_INTERVAL_S", "-1")
    with pytest.raises(ConfigError) as info:
        ControllerSettings.load()
    assert "hunter2" not in str(info.value)
    settings = ControllerSettings(admin_token="hunter2")
    assert "hunter2" not in repr(settings) and settings.admin_token == "hunter2"


def test_unknown_keys_in_a_file_are_errors_naming_the_key(tmp_path: Path) -> None:
    config = write(tmp_path / "ctl.toml", "heartbeat_interval = 5\n")
    with pytest.raises(ConfigError) as info:
        ControllerSettings.load(config_file=config)
    assert (info.value.source, info.value.field) == (str(config), "heartbeat_interval")
    assert "did you mean 'heartbeat_interval_s'" in info.value.reason
    with pytest.raises(ConfigError, match="field 'SLMOPS_AGENT_DIR': unknown setting"):
        AgentSettings.load(config_file=write(tmp_path / "agent.yaml", "SLMOPS_AGENT_DIR: /x\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        ControllerSettings.load(config_file=write(tmp_path / "broken.toml", "max_jobs = \n"))
    with pytest.raises(ConfigError, match=r"must end in \.toml, \.yaml or \.yml"):
        ControllerSettings.load(config_file=write(tmp_path / "ctl.ini", "x=1\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        ControllerSettings.load(config_file=tmp_path / "missing.toml")


# --- keyword construction, as tests and the demo use it -------------------------------------------------------
def test_keyword_construction_and_assignment_are_validated(tmp_path: Path) -> None:
    settings = ControllerSettings(listen="127.0.0.1:0", data_dir=str(tmp_path), heartbeat_interval_s=2)
    assert settings.data_dir == tmp_path and settings.offline_after_s == 6
    assert settings.database_url == f"sqlite:///{(tmp_path / 'controller.db').resolve()}"
    assert settings.admin_token_path == tmp_path / "admin.token"
    with pytest.raises(ValueError, match="greater than 0"):
        settings.heartbeat_interval_s = 0
    agent = AgentSettings(controller="127.0.0.1:1", data_dir=tmp_path, ca_cert=str(tmp_path / "ca.pem"))
    agent.enrollment_token = "tok"
    assert agent.ca_cert == tmp_path / "ca.pem" and agent.enrollment_token == "tok"
    with pytest.raises(ValueError, match="unknown runtime"):
        agent.runtime = "tensorrt-llm"


# --- slmops ... --print-config ---------------------------------------------------------------------------------
def test_controller_print_config_masks_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tomllib

    monkeypatch.setenv("SLMOPS_ADMIN_TOKEN", "hunter2")
    monkeypatch.setenv("SLMOPS_DB", "postgresql+psycopg://slm:pa55word@db.example/slmops")
    config = write(tmp_path / "ctl.toml", "max_jobs = 2\n")
    argv = ["controller", "serve", "--print-config", "--config", str(config), "--listen", "0.0.0.0:7000"]
    assert main([*argv, "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "pa55word" not in out
    printed = tomllib.loads(out)  # the output is a settings file
    assert printed["admin_token"] == "***" and printed["db_url"] == "postgresql+psycopg://slm:***@db.example/slmops"
    assert printed["listen"] == "0.0.0.0:7000" and printed["max_jobs"] == 2 and printed["data_dir"] == str(tmp_path)
    assert 'listen = "0.0.0.0:7000"  # --listen' in out and f"max_jobs = 2  # {config}" in out
    assert not (tmp_path / "admin.token").exists()  # printing starts nothing


def test_agent_print_config_masks_secrets(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    monkeypatch.setenv("SLMOPS_API_KEY", "sk-local-secret")
    argv = ["agent", "run", "--print-config", "--token", "enroll-secret", "--open-metrics", "--no-foundry-check"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "sk-local-secret" not in out and "enroll-secret" not in out
    printed = tomllib.loads(out)
    assert printed["api_key"] == "***" and printed["enrollment_token"] == "***"
    assert printed["metrics_require_key"] is False and printed["check_foundry"] is False
    assert printed["controller"] == DEFAULT_CONTROLLER and "ca_cert" not in printed  # unset: a comment


def test_cli_errors_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "run", "--read-timeout", "0", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "--read-timeout" in err and "read_timeout_s" in err and "must be > 0" in err


def test_agent_batching_is_one_of_the_runtime_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLMOPS_AGENT_BATCHING", "engine")
    assert AgentSettings.load().batching == "engine"
    monkeypatch.setenv("SLMOPS_AGENT_BATCHING", "always")
    with pytest.raises(ConfigError, match="batching"):
        AgentSettings.load()
