"""docker-compose.yml agrees with the repository, the settings classes and itself.

`docker compose config` would be the natural validator, but the development machines have
the Docker client without the Compose plugin (and without a daemon), so the file is read
with PyYAML and its structure is checked here. Compose interpolation (``${VAR:-default}``)
is resolved to its defaults, as on a machine with none of the variables set.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.settings import WorkerSettings
from vigil.stack.settings import StackSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"

GRAFANA_PORT = 3000  # Grafana runs only in Compose, so no settings class holds its port.
LOOPBACK = "127.0.0.1"
SERVICES = {"kafka", "redis", "triton", "prometheus", "grafana", "topics-init", "worker"}
HEALTH_CONDITIONS = {"service_healthy", "service_completed_successfully"}

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def _defaults(value: str) -> str:
    """Resolve Compose interpolation as with an empty environment (``$$`` is a literal ``$``)."""

    def one(match: re.Match[str]) -> str:
        op = match["op"] or ""
        return match["arg"] if op.endswith("-") else ""

    return _VAR.sub(one, value).replace("$$", "$")


@cache
def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _env(service: str) -> dict[str, str]:
    env = _services()[service].get("environment", {})
    assert isinstance(env, dict), f"{service}: write environment as a mapping"
    return {str(k): _defaults(str(v)) for k, v in env.items()}


def _ports(service: str) -> list[tuple[str, int, int]]:
    """Published ports of a service as (host_ip, host_port, container_port)."""
    result = []
    for entry in _services()[service].get("ports", []):
        if isinstance(entry, dict):
            host_ip = str(entry.get("host_ip", ""))
            result.append((host_ip, int(entry["published"]), int(entry["target"])))
            continue
        parts = _defaults(str(entry)).split("/")[0].split(":")
        assert len(parts) == 3, f"{service}: port {entry!r} must name host ip, host and container"
        result.append((parts[0], int(parts[1]), int(parts[2])))
    return result


def _bind_mounts(service: str) -> list[tuple[str, str]]:
    """Bind mounts of a service as (host path, container path)."""
    mounts = []
    for entry in _services()[service].get("volumes", []):
        if isinstance(entry, dict):
            if entry.get("type") == "bind":
                mounts.append((str(entry["source"]), str(entry["target"])))
            continue
        source, target = _defaults(str(entry)).split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def _mount_target(service: str, source: str) -> str:
    targets = [t for s, t in _bind_mounts(service) if Path(s) == Path(source)]
    assert len(targets) == 1, f"{service} should mount {source} once"
    return targets[0]


def _image_is_pinned(image: str) -> bool:
    name, _, digest = image.partition("@")
    tag = name.rsplit("/", 1)[-1].partition(":")[2]
    return bool(digest) or (bool(tag) and tag != "latest")


def test_compose_file_uses_the_compose_spec() -> None:
    assert "version" not in _compose(), "the Compose spec has no `version:` key"
    assert set(_services()) == SERVICES


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_images_are_pinned(service: str) -> None:
    spec = _services()[service]
    assert "image" in spec or "build" in spec
    if "image" in spec:
        assert _image_is_pinned(_defaults(spec["image"])), f"{service}: pin {spec['image']}"


@pytest.mark.parametrize("service", sorted(s for s in SERVICES if "build" in _services()[s]))
def test_built_images_exist_and_pin_their_bases(service: str) -> None:
    build = _services()[service]["build"]
    context = REPO / build["context"]
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    assert dockerfile.is_file(), f"{service}: {dockerfile} is missing"
    # BuildKit reads <Dockerfile>.dockerignore; without it the whole checkout (.venv) is sent.
    assert dockerfile.with_name(dockerfile.name + ".dockerignore").is_file()
    text = dockerfile.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))
    bases = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert bases, f"{dockerfile} has no FROM"
    for base in bases:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)
        assert resolved == "scratch" or _image_is_pinned(resolved), f"{dockerfile}: {base}"


def test_worker_image_runs_the_worker_as_non_root() -> None:
    text = (REPO / "deploy" / "Dockerfile").read_text()
    assert "python:3.11" in text
    users = re.findall(r"^USER (\S+)$", text, flags=re.MULTILINE)
    assert users, "the worker image must switch to an unprivileged user"
    assert users[-1] not in {"root", "0"}
    assert 'CMD ["vigil", "worker"]' in text
    assert f"EXPOSE {WorkerSettings().metrics_port}" in text


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_bind_mounts_exist_in_the_repository(service: str) -> None:
    for source, _ in _bind_mounts(service):
        assert not source.startswith("/"), f"{service}: {source} is outside the repository"
        assert (REPO / source).exists(), f"{service}: mounted path {source} does not exist"
    declared = set(_compose().get("volumes") or {})
    for entry in _services()[service].get("volumes", []):
        if isinstance(entry, str) and not entry.startswith((".", "/")):
            assert entry.split(":")[0] in declared, f"{service}: undeclared volume {entry}"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_published_ports_bind_loopback(service: str) -> None:
    for host_ip, _, _ in _ports(service):
        assert host_ip == LOOPBACK, f"{service} publishes on {host_ip or 'every address'}"


def test_published_ports_match_the_settings() -> None:
    stack = StackSettings()
    worker = WorkerSettings()
    expected = {
        "kafka": {(stack.kafka_port, stack.kafka_port)},
        "redis": {(stack.redis_port, 6379)},
        "triton": {
            (stack.triton_http_port, 8000),
            (stack.triton_grpc_port, 8001),
            (stack.triton_metrics_port, 8002),
        },
        "prometheus": {(stack.prometheus_port, 9090)},
        "grafana": {(GRAFANA_PORT, 3000)},
        "worker": {(worker.metrics_port, worker.metrics_port)},
        "topics-init": set(),
    }
    for service, ports in expected.items():
        assert {(host, container) for _, host, container in _ports(service)} == ports, service
    assert worker.metrics_port == stack.worker_metrics_ports[0]


def test_kafka_listeners() -> None:
    stack = StackSettings()
    env = _env("kafka")
    assert f"CONTROLLER://:{stack.kafka_controller_port}" in env["KAFKA_LISTENERS"]
    assert f"HOST://:{stack.kafka_port}" in env["KAFKA_LISTENERS"]
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"HOST://{LOOPBACK}:{stack.kafka_port}" in advertised
    internal = next(a for a in advertised if a.startswith("INTERNAL://"))
    assert internal.removeprefix("INTERNAL://") == _env("worker")["VIGIL_KAFKA_BOOTSTRAP"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert _services()["kafka"]["image"] == f"apache/kafka:{stack.kafka_version}"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_long_running_services_have_healthchecks(service: str) -> None:
    spec = _services()[service]
    if spec.get("restart") == "no":  # a one-shot job: it completes instead
        assert "healthcheck" not in spec
        return
    test = spec.get("healthcheck", {}).get("test")
    assert test, f"{service} needs a healthcheck"
    assert test != ["NONE"]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_dependencies_wait_for_health(service: str) -> None:
    depends_on = _services()[service].get("depends_on", {})
    assert isinstance(depends_on, dict), f"{service}: depends_on needs conditions"
    for dependency, rule in depends_on.items():
        condition = rule.get("condition")
        assert condition in HEALTH_CONDITIONS, f"{service} -> {dependency}: {condition}"
        one_shot = _services()[dependency].get("restart") == "no"
        wanted = "service_completed_successfully" if one_shot else "service_healthy"
        assert condition == wanted, f"{service} -> {dependency}"


def test_worker_waits_for_everything_it_uses() -> None:
    depends_on = _services()["worker"]["depends_on"]
    assert {k: v["condition"] for k, v in depends_on.items()} == {
        "kafka": "service_healthy",
        "redis": "service_healthy",
        "triton": "service_healthy",
        "topics-init": "service_completed_successfully",
    }
    assert _services()["worker"]["command"] == ["vigil", "worker"]
    assert _services()["topics-init"]["command"] == ["vigil", "topics", "create"]


@pytest.mark.parametrize("service", ["worker", "topics-init"])
def test_vigil_environment_is_worker_settings(service: str) -> None:
    env = _env(service)
    fields = {k.removeprefix("VIGIL_").lower(): v for k, v in env.items()}
    assert all(k.startswith("VIGIL_") for k in env), f"{service}: only VIGIL_* variables"
    unknown = set(fields) - set(WorkerSettings.model_fields)
    assert not unknown, f"{service}: not WorkerSettings fields: {sorted(unknown)}"
    settings = WorkerSettings.model_validate(fields)  # also validates every value
    assert settings.kafka_bootstrap == "kafka:19092"
    assert settings.triton_url == f"triton:{StackSettings().triton_grpc_port}"
    assert settings.redis_url.startswith("redis://redis:6379/")
    assert settings.redis_password is not None


def test_commented_security_variables_are_worker_settings() -> None:
    commented = re.findall(r"^\s*#\s*(VIGIL_[A-Z0-9_]+):", COMPOSE_FILE.read_text(), re.M)
    assert commented, "the SASL/TLS wiring should be shown in docker-compose.yml"
    for name in commented:
        assert name.removeprefix("VIGIL_").lower() in WorkerSettings.model_fields, name


def test_worker_metrics_are_reachable_from_prometheus() -> None:
    env = _env("worker")
    assert env["VIGIL_METRICS_HOST"] == "0.0.0.0"  # noqa: S104 - inside the container only
    assert int(env["VIGIL_METRICS_PORT"]) == WorkerSettings().metrics_port


def test_redis_requires_the_workers_password_and_keeps_no_files() -> None:
    command = [_defaults(str(part)) for part in _services()["redis"]["command"]]
    password = command[command.index("--requirepass") + 1]
    assert password
    assert password == _env("worker")["VIGIL_REDIS_PASSWORD"]
    assert command[command.index("--save") + 1] == ""
    assert command[command.index("--appendonly") + 1] == "no"


def test_triton_serves_the_repository_read_only() -> None:
    mounts = [m for m in _services()["triton"]["volumes"] if str(m).startswith("./triton_repo:")]
    assert mounts == ["./triton_repo:/models:ro"]
    assert "--model-repository=/models" in _services()["triton"]["command"]


def test_scale_override_only_drops_the_worker_host_port() -> None:
    class Loader(yaml.SafeLoader):
        pass

    def reset(loader: yaml.SafeLoader, node: yaml.Node) -> str:
        return "!reset"

    Loader.add_constructor("!reset", reset)
    loader = Loader((REPO / "deploy" / "compose" / "scale.yml").read_text())
    try:
        override = loader.get_single_data()
    finally:
        loader.dispose()
    assert override == {"services": {"worker": {"ports": "!reset"}}}


# --- Prometheus and Grafana as Compose runs them ------------------------------------------


def test_prometheus_config_and_rules_are_mounted_side_by_side() -> None:
    config = _mount_target("prometheus", "./deploy/prometheus/prometheus.yml")
    rules = _mount_target("prometheus", "./deploy/prometheus/rules")
    assert Path(rules) == Path(config).parent / "rules"
    assert f"--config.file={config}" in _services()["prometheus"]["command"]
    assert StackSettings().prometheus_rules_dir == Path("deploy/prometheus/rules")


def test_prometheus_scrapes_compose_services() -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    triton = [t for sc in jobs["triton"]["static_configs"] for t in sc["targets"]]
    assert triton == [f"triton:{StackSettings().triton_metrics_port}"]
    (dns,) = jobs["vigil-worker"]["dns_sd_configs"]
    assert dns["names"] == ["worker"]
    assert dns["port"] == WorkerSettings().metrics_port
    assert config["rule_files"] == ["rules/*.yml"]


def test_prometheus_job_names_match_the_local_stack() -> None:
    from vigil.stack.services import Prometheus

    local = Prometheus(StackSettings()).config()["scrape_configs"]
    assert isinstance(local, list)
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == {
        job["job_name"] for job in local
    }


def _datasource() -> dict[str, Any]:
    data = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = data["datasources"]
    assert isinstance(source, dict)
    return source


def test_grafana_datasource_is_the_compose_prometheus() -> None:
    source = _datasource()
    assert source["type"] == "prometheus"
    container_port = next(c for _, _, c in _ports("prometheus"))
    assert source["url"] == f"http://prometheus:{container_port}"
    assert source["uid"]


def test_grafana_loads_the_mounted_dashboards() -> None:
    target = _mount_target("grafana", "./deploy/grafana/dashboards")
    data = yaml.safe_load((PROVISIONING / "dashboards" / "vigil.yml").read_text())
    (provider,) = data["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == target
    for kind in ("datasources", "dashboards"):
        mounted = _mount_target("grafana", f"./deploy/grafana/provisioning/{kind}")
        assert mounted == f"/etc/grafana/provisioning/{kind}"


def _dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def test_three_dashboards_with_unique_uids() -> None:
    dashboards = [json.loads(path.read_text()) for path in _dashboard_files()]
    uids = [d["uid"] for d in dashboards]
    assert len(uids) == len(set(uids)) == 3
    assert {"vigil-pipeline", "vigil-model-serving", "vigil-clinical"} == set(uids)


@pytest.mark.parametrize("path", _dashboard_files(), ids=lambda p: p.stem)
def test_dashboard_panels_query_the_provisioned_prometheus(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    panels = dashboard["panels"]
    assert panels
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    uid = _datasource()["uid"]
    for panel in panels:
        assert panel["title"]
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], f"{panel['title']} has no targets"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == uid, panel["title"]


@pytest.mark.parametrize("path", _dashboard_files(), ids=lambda p: p.stem)
def test_dashboards_never_break_down_by_patient(path: Path) -> None:
    for panel in json.loads(path.read_text())["panels"]:
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("vigil_active_patients", "")
                .replace("vigil:active_patients", "")
            )
            assert "patient" not in expr.lower(), f"{path.name}: {panel['title']}"


DEGRADED_PANEL = "Degraded scores (share)"


def _panel(dashboard: str, title: str) -> dict[str, Any]:
    panels = json.loads((DASHBOARDS / dashboard).read_text())["panels"]
    (panel,) = [p for p in panels if p["title"] == title]
    assert isinstance(panel, dict)
    return panel


def test_pipeline_headline_shows_the_degraded_share_red_above_zero() -> None:
    panel = _panel("vigil-pipeline.json", DEGRADED_PANEL)
    assert panel["type"] == "stat"
    assert panel["gridPos"]["y"] == 0, "the degraded share belongs in the headline row"
    (target,) = panel["targets"]
    expr = target["expr"]
    assert 'vigil_scores_total{degraded="true"}' in expr
    assert "/ sum(rate(vigil_scores_total[5m]))" in expr
    assert target["legendFormat"] == "degraded (NEWS2 only)"
    assert panel["options"]["textMode"] == "value_and_name"  # shows the label by the value
    assert "degraded (NEWS2 only)" in panel["description"]
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["unit"] == "percentunit"
    steps = defaults["thresholds"]["steps"]
    assert steps[0] == {"color": "green", "value": None}
    # Grafana colours a value by the last step at or below it: 0 is green, anything above red.
    (red,) = steps[1:]
    assert red["color"] == "red"
    assert 0 < red["value"] <= 1e-6


@pytest.mark.parametrize("path", _dashboard_files(), ids=lambda p: p.stem)
def test_dashboard_panels_do_not_overlap(path: Path) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in json.loads(path.read_text())["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]
