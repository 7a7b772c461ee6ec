"""The deployment assets (deploy/) against the code and each other.

Parses deploy/compose.yaml, every deploy/k8s/*.yaml, the Dockerfiles, deploy/nginx.conf and the systemd units,
and checks the fields that tie them together: one project image, ``SLMOPS_*`` names the code reads (taken from the
settings models and the CLI source at test time, never a list kept here), ports that match the listen addresses,
the Service's selector and ports, the Secret's keys and where they are mounted, the profiles ConfigMap, the
``slmops db upgrade`` Job, and the units' commands.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.settings import AgentSettings
from controller.core.settings import ControllerSettings
from shared.defaults import CONFIG_ENV
from shared.profiles import bundled_profiles_dir

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
THIRD_PARTY = {"postgres", "minio/minio", "minio/mc", "nginx"}  # images that are not ours
ENV_FROM_SECRET = {"admin.token": "SLMOPS_ADMIN_TOKEN", "artifact_token.key": "SLMOPS_ARTIFACT_TOKEN_KEY"}
CA_KEY = "tls/ca.key"  # stays out of the cluster: the replicas get the server certificate it signed


# --- the names the code reads ------------------------------------------------------------------------------
def _settings_names(model: type) -> set[str]:
    return {model.env_name(name) for name in model.model_fields} | {CONFIG_ENV}


def _cli_names(*files: str) -> set[str]:
    pattern = re.compile(r"""(?:environ\.get|getenv)\(\s*["'](SLMOPS_\w+)["']""")
    return {m for f in files for m in pattern.findall((REPO / "controller" / "cli" / f).read_text())}


CONTROLLER_NAMES = _settings_names(ControllerSettings)
AGENT_NAMES = _settings_names(AgentSettings)
ADMIN_CLI_NAMES = _cli_names("common.py")
DB_CLI_NAMES = _cli_names("db.py")
ROLE_NAMES = {  # what a container of each role may set: the controller's pods also run the admin CLI (kubectl exec)
    "controller": CONTROLLER_NAMES | ADMIN_CLI_NAMES,
    "agent": AGENT_NAMES,
    "db": DB_CLI_NAMES,
    "tool": set(),
}


# --- parsing -----------------------------------------------------------------------------------------------
@dataclass
class Container:
    where: str
    image: str
    command: list[str]
    own_env: dict[str, Any]  # what the manifest sets: name -> value (str) or a k8s valueFrom mapping
    ports: list[dict[str, Any]] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)
    image_env: dict[str, str] = field(default_factory=dict)  # the image's ENV, under the manifest's

    @property
    def env(self) -> dict[str, Any]:
        return {**self.image_env, **self.own_env}

    @property
    def role(self) -> str:
        text = " ".join(self.command)
        for words, role in (("controller serve", "controller"), ("agent run", "agent"), ("db upgrade", "db")):
            if f"slmops {words}" in text:
                return role
        return "tool"

    def port_of(self, name: str) -> int:
        return int(str(self.env[name]).rpartition(":")[2])


def dockerfile(path: Path) -> dict[str, Any]:
    text = (path).read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    out: dict[str, Any] = {"env": env, "entrypoint": [], "cmd": []}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(rest)))
        elif word in ("ENTRYPOINT", "CMD"):
            out[word.lower()] = json.loads(rest)
    return out


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def built_images() -> dict[str, dict[str, Any]]:
    """Project image name -> its Dockerfile (from the compose services that build it)."""
    return {
        svc["image"]: dockerfile(REPO / svc["build"]["dockerfile"])
        for svc in compose()["services"].values()
        if "build" in svc
    }


def _as_list(value: Any) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value or [])


def compose_containers() -> dict[str, Container]:
    images = built_images()
    out = {}
    for name, svc in compose()["services"].items():
        image = images.get(svc["image"], {"env": {}, "entrypoint": [], "cmd": []})
        entry = _as_list(svc["entrypoint"]) if "entrypoint" in svc else image["entrypoint"]
        cmd = _as_list(svc["command"]) if "command" in svc else ([] if "entrypoint" in svc else image["cmd"])
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        out[name] = Container(f"compose {name}", svc["image"], entry + cmd, env, spec=svc, image_env=image["env"])
    return out


def k8s_docs() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[f"{doc['kind']}/{doc.get('metadata', {}).get('name', path.name)}"] = doc
    return docs


def k8s_one(kind: str) -> dict[str, Any]:
    found = [doc for key, doc in k8s_docs().items() if key.startswith(kind + "/")]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def k8s_containers() -> list[Container]:
    images = built_images()
    out = []
    for key, doc in k8s_docs().items():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            image = images.get(c["image"], {"env": {}, "entrypoint": [], "cmd": []})
            command = c.get("command", image["entrypoint"]) + c.get("args", [] if "command" in c else image["cmd"])
            env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}
            out.append(
                Container(
                    f"{key} {c['name']}",
                    c["image"],
                    command,
                    env,
                    c.get("ports", []),
                    c,
                    image["env"],
                )
            )
    return out


def units() -> dict[str, dict[str, list[str]]]:
    """Unit file -> key -> values ([Service] and the rest, flattened; Environment= may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        keys: dict[str, list[str]] = {}
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith(("#", ";", "[")):
                key, _, value = line.partition("=")
                keys.setdefault(key.strip(), []).append(value.strip())
        out[path.name] = keys
    return out


def env_file_names(path: Path) -> set[str]:
    return {line.lstrip("#").split("=", 1)[0] for line in path.read_text().splitlines() if "=" in line}


def controller_secrets_module() -> Any:
    spec = importlib.util.spec_from_file_location("controller_secrets", DEPLOY / "controller_secrets.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# --- checks ------------------------------------------------------------------------------------------------
def test_every_container_runs_the_project_image_or_a_known_third_party_one() -> None:
    images = built_images()
    assert len(images) == 2, f"compose should build the controller and agent images, builds {sorted(images)}"
    tags = {name.rpartition(":")[2] for name in images}
    assert len(tags) == 1, f"the controller and agent images should share one tag: {sorted(images)}"
    by_role: dict[str, set[str]] = {}
    for c in [*compose_containers().values(), *k8s_containers()]:
        if c.image.rpartition(":")[0] in THIRD_PARTY:
            continue
        assert c.image in images, f"{c.where}: image {c.image} is neither built in compose nor in {THIRD_PARTY}"
        by_role.setdefault("agent" if c.role == "agent" else "controller", set()).add(c.image)
    assert set(by_role) == {"controller", "agent"}, by_role
    assert all(len(names) == 1 for names in by_role.values()), f"one image per role: {by_role}"
    assert by_role["controller"] != by_role["agent"]


def test_project_images_start_the_right_process_by_default() -> None:
    images = built_images()
    assert len(images) == 2, images
    commands = {" ".join(image["entrypoint"] + image["cmd"]) for image in images.values()}
    assert commands == {"slmops controller serve", "slmops agent run"}, commands


def test_every_slmops_variable_is_one_the_code_reads() -> None:
    unknown = []
    containers = [*compose_containers().values(), *k8s_containers()]
    for c in containers:
        unknown += [
            f"{name} ({c.where}, {c.role})"
            for name in c.own_env
            if name.startswith("SLMOPS_") and name not in ROLE_NAMES[c.role]
        ]
    for name, image in built_images().items():
        role = "agent" if "agent run" in " ".join(image["cmd"]) else "controller"
        unknown += [
            f"{n} (image {name} ENV)" for n in image["env"] if n.startswith("SLMOPS_") and n not in ROLE_NAMES[role]
        ]
    for unit, keys in units().items():
        role = "agent" if "agent" in unit else "controller"
        names = {v.split("=", 1)[0] for line in keys.get("Environment", []) for v in shlex.split(line)}
        unknown += [f"{n} (systemd {unit})" for n in names if n.startswith("SLMOPS_") and n not in ROLE_NAMES[role]]
    unknown += [
        f"{n} (agent.env.example)"
        for n in env_file_names(DEPLOY / "systemd" / "agent.env.example")
        if n not in AGENT_NAMES
    ]
    assert not unknown, "variables the code does not read (not added yet, or misspelt):\n  " + "\n  ".join(unknown)


def test_controller_ports_match_their_listen_addresses() -> None:
    listen = {"grpc": "SLMOPS_LISTEN", "artifacts": "SLMOPS_ARTIFACT_LISTEN", "metrics": "SLMOPS_METRICS_LISTEN"}
    for c in k8s_containers():
        if c.role == "controller":
            ports = {p["name"]: p["containerPort"] for p in c.ports}
            assert ports == {name: c.port_of(var) for name, var in listen.items()}, c.where
    controllers = {name: c for name, c in compose_containers().items() if c.role == "controller"}
    assert len(controllers) == 2 and len({c.env.get("SLMOPS_REPLICA_ID") for c in controllers.values()}) == 2
    nginx = (DEPLOY / "nginx.conf").read_text()
    upstreams = dict(re.findall(r"upstream (\w+) \{(.*?)\}", nginx, re.S))
    servers = dict(re.findall(r"listen (\d+); proxy_pass (\w+);", nginx))
    proxy = compose()["services"]["proxy"]
    assert {p.split(":")[-1] for p in proxy["ports"]} == set(servers)
    for name, c in controllers.items():
        assert {str(c.port_of(v)) for v in listen.values()} <= set(c.spec["expose"]), name
        for upstream, var in (("grpc", "SLMOPS_LISTEN"), ("artifacts", "SLMOPS_ARTIFACT_LISTEN")):
            assert f"server {name}:{c.port_of(var)} " in upstreams[upstream], f"nginx {upstream} lacks {name}"
        url = c.env["SLMOPS_ARTIFACT_PUBLIC_URL"]
        assert re.fullmatch(r"https://proxy:(\d+)", url) and servers[url.rpartition(":")[2]] == "artifacts"


def test_agents_reach_the_one_address_and_publish_their_listen_port() -> None:
    agents = {n: c for n, c in compose_containers().items() if c.role == "agent"}
    assert len(agents) == 2
    grpc_port = next(
        port
        for port, up in re.findall(r"listen (\d+); proxy_pass (\w+);", (DEPLOY / "nginx.conf").read_text())
        if up == "grpc"
    )
    for name, c in agents.items():
        assert c.env["SLMOPS_CONTROLLER"] == f"proxy:{grpc_port}", name
        assert [p.split(":")[-1] for p in c.spec["ports"]] == [str(c.port_of("SLMOPS_SERVE_LISTEN"))], name
        assert c.env["SLMOPS_CA_CERT"].endswith("/tls/ca.pem")


def test_service_targets_the_deployment() -> None:
    service, deployment = k8s_one("Service"), k8s_one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert (
        selector.items() <= labels.items() and deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports or port["targetPort"] in ports.values(), port
    assert {p["name"] for p in service["spec"]["ports"]} >= {"grpc", "artifacts"}


def _secret_refs() -> set[tuple[str, str]]:
    refs = set()
    for doc in k8s_docs().values():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        for c in pod["containers"]:
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
        for v in pod.get("volumes", []):
            if "secret" in v:
                refs |= {(v["secret"]["secretName"], item["key"]) for item in v["secret"]["items"]}
    return refs


def test_every_secret_key_referenced_exists_and_every_key_is_used() -> None:
    secret = k8s_one("Secret")
    keys = set(secret.get("stringData") or {}) | set(secret.get("data") or {})
    refs = _secret_refs()
    assert {name for name, _ in refs} == {secret["metadata"]["name"]}
    assert {key for _, key in refs} - keys == set(), "referenced keys missing from deploy/k8s/secret.yaml"
    assert keys - {key for _, key in refs} == set(), "keys in secret.yaml that nothing reads"
    doc_keys = set(re.findall(r"--from-(?:file|literal)=([\w.-]+)=", (REPO / "docs" / "deploy.md").read_text()))
    assert doc_keys == keys, "docs/deploy.md's kubectl create secret should create exactly the Secret's keys"


def test_secret_files_land_where_the_controller_reads_them(tmp_path: Path) -> None:
    """The files the controller creates in its data dir (made by the same functions) are mounted or in env."""
    created = {str(p) for p in controller_secrets_module().create(tmp_path, ["x"])}
    assert created == {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    deployment = k8s_one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    data_dir = {e["name"]: e.get("value") for e in c["env"]}["SLMOPS_DATA_DIR"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    mounted = set()
    for v in pod["volumes"]:
        if "secret" in v:
            base = Path(mounts[v["name"]]).relative_to(data_dir)
            mounted |= {str(base / item["path"]) for item in v["secret"]["items"]}
    env_refs = {e["name"] for e in c["env"] if "secretKeyRef" in (e.get("valueFrom") or {})}
    assert mounted == created - set(ENV_FROM_SECRET) - {CA_KEY}
    assert set(ENV_FROM_SECRET.values()) <= env_refs
    assert mounts["data"] == data_dir


def test_controller_secrets_keeps_existing_files(tmp_path: Path) -> None:
    module = controller_secrets_module()
    module.create(tmp_path, ["proxy"])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    module.create(tmp_path, ["other"])
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}


def test_configmap_holds_every_bundled_profile() -> None:
    configmap = k8s_one("ConfigMap")
    bundled = {p.name: yaml.safe_load(p.read_text()) for p in bundled_profiles_dir().glob("*.yaml")}
    held = {name: yaml.safe_load(text) for name, text in configmap["data"].items()}
    assert held == bundled, "deploy/k8s/configmap-profiles.yaml differs from shared/profiles/*.yaml"
    deployment = k8s_one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    profiles_dir = {e["name"]: e.get("value") for e in c["env"]}["SLMOPS_PROFILES_DIR"]
    volume = next(
        v["name"] for v in pod["volumes"] if v.get("configMap", {}).get("name") == configmap["metadata"]["name"]
    )
    assert {m["name"]: m["mountPath"] for m in c["volumeMounts"]}[volume] == profiles_dir


def test_db_upgrade_runs_on_the_database_the_controllers_use() -> None:
    (job,) = [c for c in k8s_containers() if c.where.startswith("Job/")]
    (deployment,) = [c for c in k8s_containers() if c.where.startswith("Deployment/")]
    assert job.role == "db" and job.command == ["slmops", "db", "upgrade"] and job.image == deployment.image
    assert job.env["SLMOPS_DB"] == deployment.env["SLMOPS_DB"]
    services = compose_containers()
    migrate = [c for c in services.values() if c.role == "db"]
    assert len(migrate) == 1
    for name, c in services.items():
        if c.role == "controller":
            assert c.env["SLMOPS_DB"] == migrate[0].env["SLMOPS_DB"], name
            condition = c.spec["depends_on"][migrate[0].where.split()[-1]]["condition"]
            assert condition == "service_completed_successfully", name


@pytest.mark.parametrize(
    ("unit", "command", "role"),
    [
        ("slmops-agent.service", "agent run", "agent"),
        ("slmops-controller.service", "controller serve", "controller"),
    ],
)
def test_systemd_units_run_the_process_with_names_it_reads(unit: str, command: str, role: str) -> None:
    keys = units()[unit]
    (exec_start,) = keys["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "slmops" and argv[1:3] == command.split(), exec_start
    names = {v.split("=", 1)[0] for line in keys.get("Environment", []) for v in shlex.split(line)}
    assert {n for n in names if n.startswith("SLMOPS_")} <= ROLE_NAMES[role]


def test_the_settings_in_the_manifests_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each controller's and agent's plain values load through its settings model (addresses, choices, numbers)."""
    models = {"controller": ControllerSettings, "agent": AgentSettings}
    for c in [*compose_containers().values(), *k8s_containers()]:
        if c.role not in models:
            continue
        with monkeypatch.context() as env:
            for name in [n for n in os.environ if n.upper().startswith("SLMOPS_")]:
                env.delenv(name)
            for name, value in c.env.items():
                if isinstance(value, str) and "${" not in value:
                    env.setenv(name, value)
            models[c.role].load()  # raises ConfigError naming the variable and the field
