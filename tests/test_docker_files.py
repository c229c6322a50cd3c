"""No Docker engine runs here: check that docker/ names only things that exist in the project, and
that Compose v2 itself reads the file (`config` needs no engine)."""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from config import Settings
from lvmq.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker" / "compose.yml").read_text())
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env = {}
    for op, rest in dockerfile_instructions():
        if op == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def check_lvm_variable(name: str) -> None:
    assert name.startswith("LVM_")
    field, _, nested = name[4:].lower().partition("__")
    assert field in Settings.model_fields, f"{name}: no such setting"
    if nested:
        assert Settings.model_fields[field].annotation is not str, f"{name}: {field} takes no nested keys"


def check_command(cmd: list[str]) -> None:
    if cmd[0] == "lvmq":
        if cmd[1:] != ["--help"]:
            build_parser().parse_args(cmd[1:])  # SystemExit on an unknown command or flag
    elif cmd[0] == "rq":
        assert cmd[1] == "worker"
        args = dict(zip(cmd[2:-1:2], cmd[3:-1:2], strict=False))
        module, _, cls = args["-w"].rpartition(".")
        assert hasattr(importlib.import_module(module), cls)
        assert args["-S"] == "json"
        assert hasattr(importlib.import_module(args["-c"]), "REDIS_URL")
        queue = cmd[-1]
        assert queue.startswith("lvm-")
        assert f"LVM_MODELS__{queue[4:].upper()}" in dockerfile_env(), f"no checkpoint configured for {queue}"
    elif cmd[0] in ("redis-server", "redis-cli"):
        pass
    elif cmd[:2] == ["sh", "-c"] and cmd[2].endswith("exec redis-sentinel /tmp/sentinel.conf"):
        pass  # the ha profile's Sentinels write their config, then run
    elif cmd[:2] == ["/bin/sh", "-c"] and re.search(r"exec (/bin/prometheus --config\.file=\S+|/run\.sh)", cmd[2]):
        pass  # the monitoring profile's images, after a check that their secret is set
    else:
        pytest.fail(f"unknown command {cmd}")


def test_dockerfile_names_existing_files_and_pins_torch_like_the_project():
    for op, rest in dockerfile_instructions():
        if op == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the project"
    pin = next(d for d in PYPROJECT["project"]["optional-dependencies"]["engine"] if d.startswith("torch"))
    assert f"ARG TORCH_VERSION={pin.split('==')[1]}" in DOCKERFILE
    extras = re.findall(r'pip install "\.\[([\w,]+)\]"', DOCKERFILE)
    for extra in ",".join(extras).split(","):
        assert extra in PYPROJECT["project"]["optional-dependencies"]
    assert re.search(r"^USER lvm$", DOCKERFILE, re.M), "image must not run as root"
    cmd = next(rest for op, rest in dockerfile_instructions() if op == "CMD")
    check_command(json.loads(cmd))
    assert "lvmq" in PYPROJECT["project"]["scripts"]


def test_dockerfile_environment_is_known_settings():
    env = dockerfile_env()
    for name in env:
        if name.startswith("LVM_"):
            check_lvm_variable(name)
    assert env["LVM_BANK_PATH"].startswith(env["LVM_ARTIFACTS_DIR"])


def test_compose_commands_env_and_files():
    services = COMPOSE["services"]
    assert {"redis", "prepare", "worker-lstm", "worker-gru", "gateway"} <= set(services)
    assert "rq-dashboard" not in services  # pickle by default, cleanup on read: not shipped
    build = services["prepare"]["build"]
    assert (ROOT / "docker" / build["context"] / build["dockerfile"]).resolve() == ROOT / "docker" / "Dockerfile"
    for svc in services.values():
        if "command" in svc:
            check_command([*svc.get("entrypoint", []), *svc["command"]])
        test = svc.get("healthcheck", {}).get("test")
        if test:
            check_command(test[1:] if test[0] == "CMD" else test)
        for var in svc.get("environment") or {}:
            if var.startswith("LVM_"):
                check_lvm_variable(var)


def test_compose_operational_settings():
    services = COMPOSE["services"]
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert "--requirepass" in services["redis"]["command"]
    assert services["prepare"]["restart"] == "no"
    for name in ("worker-lstm", "worker-gru"):
        svc = services[name]
        drain = float(svc["environment"]["LVM_DRAIN_SECONDS"])
        grace = float(svc["stop_grace_period"].rstrip("s"))
        assert grace > drain, f"{name}: stop_grace_period must exceed the drain time"
        assert svc["restart"] == "unless-stopped"
        assert svc["depends_on"]["prepare"]["condition"] == "service_completed_successfully"
        assert svc["healthcheck"]["test"][1:] == ["lvmq", "health", "--worker"]
        assert "artifacts:/data" in svc["volumes"]


def test_compose_gateway_is_published_on_loopback_with_a_healthcheck():
    gateway = COMPOSE["services"]["gateway"]
    assert gateway["healthcheck"]["test"][1:4] == ["lvmq", "gateway", "--probe"]
    assert all(port.startswith("127.0.0.1:") for port in gateway["ports"])
    assert gateway["command"][-1] == gateway["ports"][0].rsplit(":", 1)[-1]
    assert set(gateway["environment"]["LVM_GATEWAY_MODELS"].split(",")) == {
        name.removeprefix("worker-") for name in COMPOSE["services"] if name.startswith("worker-")
    }


def test_env_example_defines_every_required_variable():
    text = (ROOT / "docker" / "compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    defaulted = set(re.findall(r"\$\{(\w+):-", text))
    example = dict(
        line.split("=", 1)
        for line in (ROOT / "docker" / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert required <= set(example), required - set(example)
    assert defaulted <= set(example), defaulted - set(example)


def test_compose_can_start_jaeger_for_traces_on_request():
    services = COMPOSE["services"]
    jaeger = services["jaeger"]
    assert jaeger["profiles"] == ["tracing"], "Jaeger starts only with --profile tracing"
    assert all(port.startswith("127.0.0.1:") for port in jaeger["ports"])
    assert "otel" in re.findall(r'pip install "\.\[([\w,]+)\]"', DOCKERFILE)[0].split(",")
    for name in ("worker-lstm", "worker-gru", "gateway"):
        env = services[name]["environment"]
        assert env["LVM_TRACING"] == "${LVM_TRACING:-off}"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"


def test_compose_light_lane_is_opt_in_and_pinned():
    services = COMPOSE["services"]
    lane, worker = services["light-lane-lstm"], services["worker-lstm"]
    assert lane["profiles"] == ["light-lane"]  # a CPU kept for light tenants is a choice, not the default
    assert lane["command"] == worker["command"]  # the same queue, rq's own command
    assert lane["environment"]["LVM_LANE"] == "light" and lane["cpuset"] == "${LIGHT_LANE_CPUSET:-1}"
    # the other workers may give way to it (WORKER_NICE); the lane itself stays at 0
    assert worker["environment"]["LVM_NICE"] == "${WORKER_NICE:-0}" and lane["environment"]["LVM_NICE"] == "0"
    own = ("LVM_LANE", "LVM_SEARCH_THREADS", "LVM_NICE")
    assert {k: v for k, v in lane["environment"].items() if k not in own} == {
        k: v for k, v in worker["environment"].items() if k != "LVM_NICE"
    }  # every other setting the workers share
    assert lane["healthcheck"] == worker["healthcheck"] and lane["stop_grace_period"] == worker["stop_grace_period"]


def test_compose_ha_profile_is_a_deployment_that_does_not_lose_confirmed_jobs():
    """What docs/operations.md promises of the ha profile, as the file says it: every node keeps an
    AOF on its own volume (no empty restarts), refuses writes without a replica, and Sentinels wait
    5 s before they call a master down (1 s failed over twice on a loaded host)."""
    services = COMPOSE["services"]
    nodes = [services[f"redis-ha-{i}"] for i in (1, 2, 3)]
    for i, node in enumerate(nodes, 1):
        command = node["command"]
        assert node["profiles"] == ["ha"] and f"redis-ha-{i}:/data" in node["volumes"]
        for flag, value in (("--appendonly", "yes"), ("--min-replicas-to-write", "1")):
            assert command[command.index(flag) + 1] == value, (i, flag)
        assert "--requirepass" in command and "--masterauth" in command
    assert [n["command"][n["command"].index("--replicaof") + 1] for n in nodes[1:]] == ["redis-ha-1", "redis-ha-1"]
    sentinels = [services[f"sentinel-{i}"] for i in (1, 2, 3)]
    for sentinel in sentinels:
        script = sentinel["command"][2]
        assert sentinel["profiles"] == ["ha"]
        assert "sentinel monitor lvm redis-ha-1 6379 2" in script and "down-after-milliseconds lvm 5000" in script
    assert "${LVM_REDIS_URL:-" in (ROOT / "docker" / "compose.yml").read_text()  # the stack can point at them
    assert {"redis-ha-1", "redis-ha-2", "redis-ha-3"} <= set(COMPOSE["volumes"])


MONITORING = ROOT / "docker" / "monitoring"


def _exported_metrics() -> set[str]:
    """Every metric name the workers and the gateway register, with a histogram's series."""
    names = set()
    for module in ("worker/metrics.py", "gateway/metrics.py"):
        for name in re.findall(r'"(lvm_[a-z_]+)"', (ROOT / module).read_text()):
            names |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_the_monitoring_profile_scrapes_every_worker_and_the_gateway_behind_its_key():
    services = COMPOSE["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"])  # the host's loopback only
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    port = int(COMPOSE["x-lvm-env"]["LVM_METRICS_PORT"])
    [workers] = jobs["lvmq-worker"]["dns_sd_configs"]
    worker_services = {n for n in services if n.startswith("worker-")}
    assert set(workers["names"]) == worker_services and workers["port"] == port  # every replica of each
    assert all("ports" not in services[n] for n in worker_services)  # worker metrics stay inside
    gateway = jobs["lvmq-gateway"]
    assert gateway["static_configs"][0]["targets"] == [f"gateway:{services['gateway']['command'][-1]}"]
    assert gateway["authorization"]["credentials_file"] in services["prometheus"]["command"][0]
    assert "LVM_GATEWAY_METRICS_KEY" in services["gateway"]["environment"]
    # Grafana refuses its default password, and reads the provisioned files compose mounts
    assert "GF_SECURITY_ADMIN_PASSWORD" in services["grafana"]["command"][0]
    mounts = " ".join(services["grafana"]["volumes"])
    assert "./monitoring/grafana/provisioning:" in mounts and "./monitoring/grafana/dashboards:" in mounts


def test_the_grafana_dashboard_draws_the_ops_page_panels_from_metrics_that_exist():
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "lvmq.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\b(lvm_[a-z_]+)", e)}
    assert used and used <= _exported_metrics(), used - _exported_metrics()
    joined = " ".join(exprs)
    for wanted in ("lvm_queue_depth", "lvm_jobs_total", "lvm_gateway_overloaded_total", "histogram_quantile(0.5",
                   "histogram_quantile(0.99", 'stage="total_latency"', "lvm_heartbeat_age_seconds"):  # fmt: skip
        assert wanted in joined, wanted
    provider = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "dashboards" / "lvmq.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {source["datasources"][0]["uid"]}


@pytest.mark.parametrize("profile", ["", "ha", "monitoring", "tracing", "light-lane"])
def test_docker_compose_config_validates_the_file_with_each_profile(profile, tmp_path):
    """Compose v2 itself (no engine needed for `config`): the host's plugin, or Debian's package
    that harness/debian_tools.py fetches."""
    import os
    import subprocess

    from harness import debian_tools

    command = debian_tools.compose()
    if command is None:
        pytest.skip(debian_tools.WHY_NO_COMPOSE)
    env = {**os.environ, "REDIS_PASSWORD": "x"}  # what docker/.env.example asks to set
    args = [*command, "-f", str(ROOT / "docker" / "compose.yml"), *(["--profile", profile] if profile else [])]
    checked = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, env=env, timeout=60)
    assert checked.returncode == 0, checked.stderr
    services = set(subprocess.run([*args, "config", "--services"], capture_output=True, text=True, env=env,
                                  timeout=60).stdout.split())  # fmt: skip
    wanted = {"": {"gateway", "worker-lstm"}, "ha": {"redis-ha-1", "sentinel-3"},
              "monitoring": {"prometheus", "grafana"}, "tracing": {"jaeger"},
              "light-lane": {"light-lane-lstm", "worker-lstm"}}[profile]  # fmt: skip
    assert wanted <= services, services
    unset = {k: v for k, v in env.items() if k != "REDIS_PASSWORD"}
    missing = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, env=unset, timeout=60)
    assert missing.returncode != 0 and "REDIS_PASSWORD" in missing.stderr  # a required secret is refused by name
