"""docker-compose.yaml, Dockerfile and .dockerignore, checked without a Docker engine.

Two layers:

* ``docker-compose config`` (Debian's docker-compose 1.29) validates the file against the Compose
  schema, with and without profiles. Missing tool: a skip locally, a failure under ``CI=true``.
* Pure-Python checks (PyYAML) for what the schema cannot see: drift between the compose file and
  the provider's config options, the Dockerfile, the dependency locks, the repository layout and
  docs/docker-compose.md, plus wiring mistakes (a URL naming the wrong service, a dependency on a
  service of another profile, a health condition on a service without a healthcheck, ...).

Variables are interpolated with their ``${VAR:-default}`` defaults, i.e. the stack a user gets
with no environment; a few tests also interpolate with overrides.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DOCS = REPO / "docs" / "docker-compose.md"
INSTALL_SCRIPT = REPO / "docker" / "install-provider.sh"
AIRFLOW3_LOCK = REPO / "requirements" / "airflow3.lock"

# Every service and the profiles it belongs to (empty: always started).
EXPECTED_SERVICES: dict[str, set[str]] = {
    "postgres": set(),
    "redis": set(),
    "openbao": set(),
    "airflow-init": set(),
    "airflow-apiserver": set(),
    "airflow-scheduler": set(),
    "airflow-dag-processor": set(),
    "airflow-triggerer": set(),
    "airflow-worker": {"celery"},
    "marquez-db": {"lineage"},
    "marquez": {"lineage"},
    "marquez-web": {"lineage"},
    "ollama": {"ollama"},
    "ollama-pull": {"ollama"},
}
AIRFLOW_SERVICES = {name for name in EXPECTED_SERVICES if name.startswith("airflow-")}
LONG_RUNNING_AIRFLOW = AIRFLOW_SERVICES - {"airflow-init"}
PROFILES = ("celery", "lineage", "ollama")

# ---------------------------------------------------------------------------------------------
# Helpers: Compose variable interpolation and file loading
# ---------------------------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """Compose's ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``, ``$$``."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"]
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if unset else current  # type: ignore[return-value]
        if op in (":?", "?") and unset:
            raise ValueError(f"required variable {name} is not set: {arg}")
        return current or ""

    return _VARIABLE.sub(replace, value)


@cache
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


@cache
def compose_raw() -> dict[str, Any]:
    """The file as PyYAML reads it (anchors and ``<<`` merges resolved, variables not)."""
    return yaml.safe_load(compose_text())


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    return interpolate(compose_raw(), env)


def services(env: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    return compose(env)["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "KEY=value" list form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def profiles(service: dict[str, Any]) -> set[str]:
    return set(service.get("profiles") or [])


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int, str]]:
    """(host ip, host port, container port, protocol) of each short-syntax ``ports`` entry."""
    result = []
    for entry in service.get("ports") or []:
        spec, _, proto = str(entry).partition("/")
        parts = spec.split(":")
        if len(parts) == 3:
            ip, host, container = parts
        elif len(parts) == 2:
            ip, (host, container) = "0.0.0.0", parts
        else:
            raise AssertionError(f"port {entry!r} is not published on a fixed host port")
        result.append((ip, int(host), int(container), proto or "tcp"))
    return result


def dockerfile_default_image() -> str:
    match = re.search(r"^ARG AIRFLOW_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "Dockerfile declares no `ARG AIRFLOW_IMAGE=<default>`"
    return match.group(1)


def lock_airflow_version(lock: Path) -> str:
    match = re.search(r"^apache-airflow==(\S+)$", lock.read_text(), re.MULTILINE)
    assert match, f"{lock.name} pins no apache-airflow==X"
    return match.group(1)


# ---------------------------------------------------------------------------------------------
# (a) docker-compose itself
# ---------------------------------------------------------------------------------------------


def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe:
        return exe
    message = "docker-compose is not installed (apt-get install -y --no-install-recommends docker-compose)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; CI must install it", pytrace=False)
    pytest.skip(message)


def _run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    # A bare environment: the file must be valid with its own defaults, not with the caller's.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [_docker_compose(), "--project-directory", str(REPO), "-f", str(COMPOSE_FILE), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "enabled",
    [(), ("celery",), ("lineage",), ("ollama",), PROFILES],
    ids=["default", "celery", "lineage", "ollama", "all-profiles"],
)
def test_docker_compose_config_is_valid(enabled):
    flags = [arg for profile in enabled for arg in ("--profile", profile)]
    result = _run_compose(*flags, "config", "-q")
    assert result.returncode == 0, result.stderr
    # docker-compose only warns (exit 0) about variables without a default.
    assert "variable is not set" not in result.stderr, result.stderr


def test_docker_compose_sees_the_same_services_and_interpolation():
    names = _run_compose("config", "--services")
    assert names.returncode == 0, names.stderr
    assert set(names.stdout.split()) == set(EXPECTED_SERVICES)

    rendered = _run_compose("--profile", "celery", "config")
    assert rendered.returncode == 0, rendered.stderr
    theirs = yaml.safe_load(rendered.stdout)["services"]
    ours = services()
    # Our interpolation (used by every test below) agrees with the real tool.
    for name in ("airflow-scheduler", "airflow-worker", "postgres", "openbao"):
        assert environment(theirs[name]) == environment(ours[name]), name


# ---------------------------------------------------------------------------------------------
# (b) structure
# ---------------------------------------------------------------------------------------------


def test_yaml_sanity():
    text = compose_text()
    assert text.endswith("\n"), "no final newline"
    assert not text.endswith("\n\n"), "blank lines at the end"
    assert "\t" not in text, "tabs"
    trailing = [n for n, line in enumerate(text.splitlines(), 1) if line != line.rstrip()]
    assert not trailing, f"trailing whitespace on lines {trailing}"

    # PyYAML silently keeps the last of duplicate keys; yamllint would not.
    def walk(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            keys = [k.value for k, _ in node.value if k.value != "<<"]
            dupes = {k for k in keys if keys.count(k) > 1}
            assert not dupes, f"duplicate keys {dupes} in {path or 'top level'}"
            for key, value in node.value:
                walk(value, f"{path}.{key.value}")
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]")

    walk(yaml.compose(text), "")
    assert "version" not in compose_raw(), "the `version` key is obsolete in the Compose spec"


def test_services_and_profiles():
    actual = {name: profiles(svc) for name, svc in services().items()}
    assert actual == EXPECTED_SERVICES
    assert set(PROFILES) == set().union(*actual.values())


def test_airflow_services_share_the_common_block():
    root = yaml.compose(compose_text())
    top = {k.value: v for k, v in root.value}
    common = top["x-airflow-common"]
    common_env = next(v for k, v in common.value if k.value == "environment")
    for key, node in top["services"].value:
        fields = {k.value: v for k, v in node.value}
        if key.value not in AIRFLOW_SERVICES:
            assert fields.get("<<") is not common, f"{key.value} is not an Airflow service"
            continue
        assert fields.get("<<") is common, f"{key.value} must merge <<: *airflow-common"
        for own in ("image", "build", "volumes", "user"):
            assert own not in fields, f"{key.value} overrides `{own}` of x-airflow-common"
        if "environment" in fields:
            env_fields = {k.value: v for k, v in fields["environment"].value}
            assert env_fields.get("<<") is common_env, f"{key.value} must merge *airflow-common-env"

    # And after merging, every Airflow container really carries the common values.
    raw = compose_raw()
    base = raw["x-airflow-common"]
    for name in AIRFLOW_SERVICES:
        svc = raw["services"][name]
        assert (svc["image"], svc["build"]) == (base["image"], base["build"]), name
        assert environment(base).items() <= environment(svc).items(), name


def test_image_is_built_from_this_repository():
    raw = compose_raw()
    build = raw["x-airflow-common"]["build"]
    assert (REPO / build["context"]).resolve() == REPO
    assert (REPO / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()
    image = interpolate(raw["x-airflow-common"]["image"])
    for name, svc in services().items():
        if name not in AIRFLOW_SERVICES:
            assert "build" not in svc, f"{name} should use a published image"
            assert svc.get("image") != image, f"{name} runs the Airflow image"


def test_dockerfile_default_airflow_equals_the_airflow3_lock():
    image = dockerfile_default_image()
    match = re.fullmatch(r"apache/airflow:(?P<airflow>[\w.]+)-python(?P<python>[\d.]+)", image)
    assert match, image
    assert match["airflow"] == lock_airflow_version(AIRFLOW3_LOCK)
    # The locks are compiled for one Python version; the image must use it.
    header = re.search(r"--python-version (\S+)", AIRFLOW3_LOCK.read_text())
    assert header, "lock header names no --python-version"
    assert match["python"] == header.group(1)
    # docker-compose.yaml passes the same default (a build arg overrides the Dockerfile's).
    assert compose()["x-airflow-common"]["build"]["args"]["AIRFLOW_IMAGE"] == image


def test_mounted_paths_exist():
    volumes_declared = set(compose_raw().get("volumes") or {})
    targets = {}
    for name, svc in services().items():
        for entry in svc.get("volumes") or []:
            source, target, *_ = str(entry).split(":")
            if source.startswith((".", "/")):
                path = (REPO / source).resolve()
                assert path.is_dir(), f"{name} mounts {source}, which is not a directory in the repo"
                assert REPO in path.parents or path == REPO, f"{name} mounts {source} outside the repo"
            else:
                assert source in volumes_declared, f"{name} uses undeclared volume {source}"
            if name == "airflow-scheduler":
                targets[target] = source
    assert Path(targets["/opt/airflow/dags"]) == Path("./dags")
    assert Path(targets["/opt/airflow/plugins"]) == Path("./plugins")
    assert "/opt/airflow/logs" in targets


# ---------------------------------------------------------------------------------------------
# (b) wiring: URLs, ports, dependencies
# ---------------------------------------------------------------------------------------------


def _airflow_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    return environment(services(env)["airflow-scheduler"])


@pytest.mark.parametrize(
    "overrides",
    [{}, {"POSTGRES_USER": "alp", "POSTGRES_PASSWORD": "s3cret", "POSTGRES_DB": "meta"}],
    ids=["defaults", "overridden"],
)
def test_metadata_db_url_points_at_the_postgres_service(overrides):
    svcs = services(overrides)
    pg = environment(svcs["postgres"])
    airflow_env = _airflow_env(overrides)
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        url = urlsplit(airflow_env[key])
        assert url.hostname == "postgres", key
        assert svcs[url.hostname]["image"].startswith("postgres:"), key
        assert (url.port or 5432) == 5432, key
        assert url.username == pg["POSTGRES_USER"], key
        assert url.password == pg["POSTGRES_PASSWORD"], key
        assert url.path.lstrip("/") == pg["POSTGRES_DB"], key
    broker = urlsplit(airflow_env["AIRFLOW__CELERY__BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)


def test_execution_api_url_points_at_the_api_server():
    svcs = services()
    api = svcs["airflow-apiserver"]
    command = api["command"]
    assert command[0] == "api-server"
    port = int(command[command.index("--port") + 1])
    assert [p[2] for p in published_ports(api)] == [port]
    url = urlsplit(_airflow_env()["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert url.hostname == "airflow-apiserver"
    assert url.port == port
    assert url.path == "/execution/"
    health = api["healthcheck"]["test"]
    assert f"http://localhost:{port}/api/v2/monitor/health" in health


def test_published_host_ports_do_not_collide():
    published = [(name, *port) for name, svc in services().items() for port in published_ports(svc)]
    assert published, "nothing is published"
    for i, (name, ip, host, _, proto) in enumerate(published):
        for other, other_ip, other_host, _, other_proto in published[i + 1 :]:
            same_address = ip == other_ip or "0.0.0.0" in (ip, other_ip)
            assert not (same_address and (host, proto) == (other_host, other_proto)), (
                f"{name} and {other} both publish {ip}:{host}/{proto}"
            )
    # Development stack: nothing is reachable from other machines unless BIND_ADDRESS says so.
    assert {ip for _, ip, _, _, _ in published} == {"127.0.0.1"}


def test_dependencies_are_startable():
    svcs = services()
    for name, svc in svcs.items():
        for target, condition in depends_on(svc).items():
            assert target in svcs, f"{name} depends on unknown service {target}"
            # A dependency outside the dependant's profiles is not started with it.
            assert profiles(svcs[target]) <= profiles(svc), (
                f"{name} (profiles {profiles(svc) or '{}'}) depends on {target} "
                f"(profiles {profiles(svcs[target])})"
            )
            if condition == "service_healthy":
                assert "test" in (svcs[target].get("healthcheck") or {}), f"{target} has no healthcheck"
            if condition == "service_completed_successfully":
                assert svcs[target].get("restart") == "no", f"{target} is a one-shot, restart: 'no'"


def test_airflow_components_wait_for_schema_and_api():
    svcs = services()
    init = depends_on(svcs["airflow-init"])
    assert init.get("postgres") == "service_healthy"
    for name in LONG_RUNNING_AIRFLOW:
        deps = depends_on(svcs[name])
        assert deps.get("airflow-init") == "service_completed_successfully", name
        assert deps.get("postgres") == "service_healthy", name
        assert "test" in svcs[name].get("healthcheck", {}), f"{name} has no healthcheck"
        if name != "airflow-apiserver":
            assert deps.get("airflow-apiserver") == "service_healthy", name


def test_executor_defaults_to_local_and_worker_is_celery():
    assert _airflow_env()["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert _airflow_env({"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"})["AIRFLOW__CORE__EXECUTOR"] == (
        "CeleryExecutor"
    )
    worker = services()["airflow-worker"]
    script = " ".join(worker["command"])
    assert "airflow celery worker" in script
    assert "CeleryExecutor" in script
    assert "celery" in " ".join(worker["healthcheck"]["test"])


# ---------------------------------------------------------------------------------------------
# (b) the provider's configuration, secrets, LLM and lineage wiring
# ---------------------------------------------------------------------------------------------


def test_llm_provider_env_names_real_config_options():
    from airflow_llm_provider.get_provider_info import get_provider_info

    options = get_provider_info()["config"]["llm_provider"]["options"]
    env = _airflow_env()
    ours = {k: v for k, v in env.items() if re.match(r"AIRFLOW__[A-Z0-9_]*LLM", k)}
    assert ours, "the compose file sets no [llm_provider] option"
    for key, value in ours.items():
        match = re.fullmatch(r"AIRFLOW__LLM_PROVIDER__(?P<option>[A-Z0-9_]+)", key)
        assert match, f"{key} does not address the [llm_provider] section"
        option = match["option"].lower()
        assert option in options, f"{key}: [llm_provider] has no option {option!r}"
        if options[option]["type"] == "boolean":
            assert value.lower() in ("true", "false"), f"{key}={value!r} is not a boolean"

    # The default connection id and the AIRFLOW_CONN_ variable describe the same connection.
    conn_id = env["AIRFLOW__LLM_PROVIDER__DEFAULT_LLM_CONN_ID"]
    assert f"AIRFLOW_CONN_{conn_id.upper()}" in env
    assert env[f"AIRFLOW_CONN_{conn_id.upper()}"] == "", "no LLM connection unless the user sets one"


SECRET_KEYS = (
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "VAULT_TOKEN",
)


def test_secrets_are_overridable_dev_defaults():
    raw_env = compose_raw()["x-airflow-common"]["environment"]
    for key in SECRET_KEYS:
        value = str(raw_env[key])
        assert re.fullmatch(r"\$\{[A-Z0-9_]+:-[^}]+\}", value), f"{key} must be ${{VAR:-dev default}}"
        assert _airflow_env({value[2:].split(":")[0]: "from-env"})[key] == "from-env", key
    for name in ("postgres", "openbao", "marquez-db"):
        for key, value in compose_raw()["services"][name]["environment"].items():
            if re.search("PASSWORD|TOKEN", key):
                assert str(value).startswith("${"), f"{name}: {key} is hard-coded"
    assert re.search(r"production must override", compose_text(), re.IGNORECASE)

    # The Fernet default must be a usable key, or Airflow refuses to store connections.
    from cryptography.fernet import Fernet

    Fernet(_airflow_env()["AIRFLOW__CORE__FERNET_KEY"].encode())
    # The stack's Vault token is the OpenBao dev root token.
    bao = environment(services()["openbao"])
    assert _airflow_env()["VAULT_TOKEN"] == bao["BAO_DEV_ROOT_TOKEN_ID"]
    vault = urlsplit(_airflow_env()["VAULT_ADDR"])
    assert vault.hostname == "openbao"
    assert vault.port == int(bao["BAO_DEV_LISTEN_ADDRESS"].rsplit(":", 1)[1])


def _docs() -> str:
    return DOCS.read_text()


def test_documented_ollama_connection_resolves_to_the_ollama_service(monkeypatch):
    svcs = services()
    match = re.search(r"AIRFLOW_CONN_PYDANTICAI_DEFAULT='(\{.*?\})'", _docs())
    assert match, "docs/docker-compose.md shows no AIRFLOW_CONN_PYDANTICAI_DEFAULT='{...}' example"
    conn = json.loads(match.group(1))
    assert conn["conn_type"] == "pydanticai"
    # The model the docs use is the one ollama-pull downloads.
    pulled = svcs["ollama-pull"]["command"][-1]
    assert conn["extra"]["model"] == f"ollama:{pulled}"
    container_ports = {p[2] for p in published_ports(svcs["ollama"])}
    host = urlsplit(conn["host"])
    assert host.hostname == "ollama"
    assert host.port in container_ports
    assert host.path == "/v1"
    assert urlsplit(environment(svcs["ollama-pull"])["OLLAMA_HOST"]).port in container_ports

    # The provider really turns it into a model at that address (no request is made).
    from airflow_llm_provider.hooks.llm import LLMHook

    monkeypatch.setenv("AIRFLOW_CONN_PYDANTICAI_DEFAULT", match.group(1))
    hook = LLMHook()
    model = hook.get_conn()
    assert not hook.synthetic
    assert str(model.base_url).rstrip("/") == conn["host"]
    assert hook.model_name == conn["extra"]["model"]


def test_documented_lineage_url_points_at_marquez():
    svcs = services()
    assert _airflow_env()["OPENLINEAGE_URL"] == "", "OpenLineage must stay off without the profile"
    match = re.search(r"OPENLINEAGE_URL=(http://\S+?)[`\s]", _docs())
    assert match, "docs/docker-compose.md does not show OPENLINEAGE_URL=http://..."
    url = urlsplit(match.group(1))
    marquez = svcs["marquez"]
    assert url.hostname == "marquez"
    assert url.port == int(environment(marquez)["MARQUEZ_PORT"])
    assert url.port in {p[2] for p in published_ports(marquez)}
    web = environment(svcs["marquez-web"])
    assert (web["MARQUEZ_HOST"], int(web["MARQUEZ_PORT"])) == (url.hostname, url.port)


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_every_variable_has_a_default_and_is_documented():
    names = set()
    # Compose interpolates values (not comments): walk the parsed file.
    for text in _strings(compose_raw()):
        for match in _VARIABLE.finditer(text):
            if match["escaped"]:
                continue
            name = match["name"] or match["bare"]
            assert match["op"] == ":-", f"${{{name}}} needs a ${{{name}:-default}}"
            names.add(name)
    assert "AIRFLOW_IMAGE" in names
    docs = _docs()
    missing = sorted(name for name in names if f"`{name}`" not in docs)
    assert not missing, f"not documented in docs/docker-compose.md: {missing}"


def test_docs_name_every_service_and_are_honest_about_validation():
    docs = _docs()
    missing = sorted(name for name in EXPECTED_SERVICES if f"`{name}`" not in docs)
    assert not missing, f"services not described in docs/docker-compose.md: {missing}"
    for profile in PROFILES:
        assert f"--profile {profile}" in docs
    assert "not been run on a Docker engine" in docs


# ---------------------------------------------------------------------------------------------
# Dockerfile, build context and install script
# ---------------------------------------------------------------------------------------------


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif glob.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif glob[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif glob[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif glob[i] == "[":
                end = glob.index("]", i)
                regex, i = regex + glob[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(glob[i]), i + 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def in_build_context(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negated, regex in _dockerignore_patterns():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


def _copy_sources() -> list[str]:
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith(("COPY ", "ADD ")):
            args = [a for a in line.split()[1:] if not a.startswith("--")]
            sources += args[:-1]
    assert sources
    return sources


def test_build_context_holds_exactly_the_build_inputs():
    for source in _copy_sources():
        matches = [p for p in REPO.glob(source.rstrip("/")) if p.exists()]
        assert matches, f"COPY {source}: nothing in the repo"
        for match in matches:
            files = [match] if match.is_file() else [f for f in match.rglob("*") if f.is_file()]
            for file in files:
                rel = file.relative_to(REPO).as_posix()
                if "__pycache__" not in rel:
                    assert in_build_context(rel), f"COPY {source} needs {rel}, .dockerignore drops it"
    for rel in ("tests/conftest.py", ".git/HEAD", ".venv/pyvenv.cfg", "dags/x.py", "docker-compose.yaml"):
        assert not in_build_context(rel), f"{rel} should stay out of the build context"
    assert not in_build_context("airflow_llm_provider/__pycache__/x.cpython-311.pyc")


def _constraints(tmp_path: Path, version: str, mode: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "AIRFLOW_VERSION": version,
        "PROVIDER_SRC": str(REPO),
        "TMPDIR": str(tmp_path),
    }
    if mode is not None:
        env["PROVIDER_CONSTRAINTS"] = mode
    return subprocess.run(
        ["bash", str(INSTALL_SCRIPT), "constraints"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_install_script_picks_the_lock_of_the_image_airflow(tmp_path):
    locks = sorted((REPO / "requirements").glob("*.lock"))
    assert AIRFLOW3_LOCK in locks
    for lock in locks:
        result = _constraints(tmp_path, lock_airflow_version(lock))
        assert result.returncode == 0, result.stderr
        assert Path(result.stdout.strip()) == lock

    # An Airflow no lock was compiled for: only Airflow is pinned, with a warning.
    result = _constraints(tmp_path, "3.0.6")
    assert result.returncode == 0, result.stderr
    assert "WARNING" in result.stderr
    assert Path(result.stdout.strip()).read_text().split() == ["apache-airflow==3.0.6"]

    result = _constraints(tmp_path, lock_airflow_version(AIRFLOW3_LOCK), mode="airflow")
    assert result.returncode == 0, result.stderr
    pinned = Path(result.stdout.strip()).read_text().split()
    assert pinned == [f"apache-airflow=={lock_airflow_version(AIRFLOW3_LOCK)}"]

    assert _constraints(tmp_path, "3.3.2", mode="bogus").returncode == 2


def test_dockerfile_installs_extras_and_bakes_nothing_secret():
    import tomllib

    text = DOCKERFILE.read_text()
    extras = re.search(r"^ARG PROVIDER_EXTRAS=(\S+)$", text, re.MULTILINE)
    assert extras, "Dockerfile declares no ARG PROVIDER_EXTRAS"
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.group(1).split(",")) == {"ssh", "celery"}
    assert {"ssh", "celery"} <= set(declared)
    instructions = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    baked = [
        line for line in instructions if re.match(r"(ENV|ARG)\s+\S*(FERNET|JWT|SECRET|PASSWORD|TOKEN)", line)
    ]
    assert not baked, f"secrets belong in the compose environment, not the image: {baked}"
    # The dependency layer comes before the code, or every edit reinstalls everything.
    deps = next(i for i, line in enumerate(instructions) if 'install-provider.sh" deps' in line)
    code = next(i for i, line in enumerate(instructions) if re.match(r"COPY .*airflow_llm_provider/", line))
    assert deps < code
