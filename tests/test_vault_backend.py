"""VaultBackend against OpenBao's real dev server; request counts come from its audit log."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid

import pytest

from airflow_llm_provider.secrets.vault import VaultBackend, VaultBackendError, VaultUnreachableError
from tests.fixtures._proc import free_port
from tests.log_capture import capture_hook_log

READ_POLICY = """
path "secret/data/*" { capabilities = ["read"] }
path "kv1/*" { capabilities = ["read"] }
"""


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _put(vault, path: str, mount: str = "secret", **data) -> None:
    vault.client().secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point=mount)


def _redact(value: str):
    try:
        from airflow.sdk.log import redact
    except ImportError:  # Airflow 2.x
        from airflow.utils.log.secrets_masker import redact
    return redact(value)


def _warnings(log, needle: str) -> int:
    """WARNING lines containing ``needle``: stdlib records on 2.x, structlog's stdout on 3."""
    if log.records:
        return sum(1 for r in log.records if r.levelno == logging.WARNING and needle in r.getMessage())
    return sum(1 for line in log.text.splitlines() if needle in line and "warn" in line.lower())


@pytest.fixture
def make_backend(vault):
    def make(**kwargs) -> VaultBackend:
        kwargs.setdefault("url", vault.url)
        if kwargs.get("auth_type", "token") == "token" and "token_path" not in kwargs:
            kwargs.setdefault("token", vault.token)
        return VaultBackend(**kwargs)

    return make


@pytest.fixture(scope="module")
def kv1_mount(vault) -> str:
    root = vault.client()
    if "kv1/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("kv", path="kv1", options={"version": "1"})
    return "kv1"


@pytest.fixture(scope="module")
def read_policy(vault) -> str:
    vault.client().sys.create_or_update_policy(name="airflow-read", policy=READ_POLICY)
    return "airflow-read"


@pytest.fixture(scope="module")
def approle(vault, read_policy):
    """``(role_id, secret_id)`` of a role with a one-hour token, and of one whose token lives 2 s."""
    root = vault.client()
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")

    def role(name: str, ttl: str) -> tuple[str, str]:
        root.auth.approle.create_or_update_approle(
            name, token_policies=[read_policy], token_ttl=ttl, token_max_ttl=ttl
        )
        role_id = root.auth.approle.read_role_id(name)["data"]["role_id"]
        secret_id = root.auth.approle.generate_secret_id(name)["data"]["secret_id"]
        return role_id, secret_id

    return {"long": role("airflow", "1h"), "short": role("airflow-short", "2s")}


@pytest.fixture(scope="module")
def userpass(vault, read_policy) -> tuple[str, str]:
    root = vault.client()
    if "userpass/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("userpass")
    root.auth.userpass.create_or_update_user("airflow", password="s3cret-userpass", policies=[read_policy])
    return "airflow", "s3cret-userpass"


# -- reading ------------------------------------------------------------------------------------


def test_connection_as_uri(vault, make_backend):
    conn_id = _unique("uri")
    _put(vault, f"connections/{conn_id}", conn_uri="postgresql://alice:pa%2Fss-uri-1@db.example:5432/app")
    backend = make_backend()

    assert backend.get_conn_value(conn_id) == "postgresql://alice:pa%2Fss-uri-1@db.example:5432/app"
    conn = backend.get_connection(conn_id)
    assert (conn.host, conn.login, conn.password, conn.port, conn.schema) == (
        "db.example",
        "alice",
        "pa/ss-uri-1",
        5432,
        "app",
    )
    assert "pa/ss-uri-1" not in str(_redact("password is pa/ss-uri-1"))


def test_connection_as_json_fields(vault, make_backend):
    conn_id = _unique("fields")
    _put(
        vault,
        f"connections/{conn_id}",
        conn_type="http",
        host="api.example",
        login="bob",
        password="json-field-password-1",
        port=8443,
        extra={"timeout": 5, "api_key": "extra-api-key-1"},
    )
    backend = make_backend()

    assert json.loads(backend.get_conn_value(conn_id))["host"] == "api.example"
    conn = backend.get_connection(conn_id)
    assert (conn.conn_type, conn.host, conn.login, conn.password, conn.port) == (
        "http",
        "api.example",
        "bob",
        "json-field-password-1",
        8443,
    )
    assert conn.extra_dejson == {"timeout": 5, "api_key": "extra-api-key-1"}
    assert "json-field-password-1" not in str(_redact("pw json-field-password-1"))
    assert "extra-api-key-1" not in str(_redact("key extra-api-key-1"))


def test_variable_and_config(vault, make_backend):
    key = _unique("var")
    _put(vault, f"variables/{key}", value="variable-value-1")
    _put(vault, f"config/{key}", value="config-value-1")
    _put(vault, f"variables/{key}_novalue", other="x")
    backend = make_backend()

    assert backend.get_variable(key) == "variable-value-1"
    assert backend.get_config(key) == "config-value-1"
    assert backend.get_variable(_unique("missing")) is None
    assert backend.get_variable(f"{key}_novalue") is None
    assert "variable-value-1" not in str(_redact("v=variable-value-1"))
    assert "config-value-1" not in str(_redact("c=config-value-1"))


def test_disabled_kind_makes_no_request(vault, make_backend):
    backend = make_backend(variables_path=None)
    before = vault.request_count("secret/")
    assert backend.get_variable("anything") is None
    assert vault.request_count("secret/") == before


def test_kv_v1_mount(vault, make_backend, kv1_mount):
    key = _unique("v1")
    vault.client().secrets.kv.v1.create_or_update_secret(
        path=f"variables/{key}", secret={"value": "kv1-value"}, mount_point=kv1_mount
    )
    backend = make_backend(mount_point=kv1_mount, kv_engine_version=1)
    assert backend.get_variable(key) == "kv1-value"


def test_kv_engine_version_auto(vault, make_backend, kv1_mount):
    key = _unique("auto")
    vault.client().secrets.kv.v1.create_or_update_secret(
        path=f"variables/{key}", secret={"value": "from-v1"}, mount_point=kv1_mount
    )
    _put(vault, f"variables/{key}", value="from-v2")

    v1 = make_backend(mount_point=kv1_mount, kv_engine_version="auto")
    v2 = make_backend(kv_engine_version="auto")
    assert v1.get_variable(key) == "from-v1"
    assert v2.get_variable(key) == "from-v2"
    assert v1._detected_versions == {kv1_mount: 1}
    assert v2._detected_versions == {"secret": 2}


def test_kv_engine_version_auto_without_mount_permission(vault, make_backend, approle, capfd):
    key = _unique("auto_denied")
    _put(vault, f"variables/{key}", value="still-read")
    role_id, secret_id = approle["long"]
    backend = make_backend(
        auth_type="approle", role_id=role_id, secret_id=secret_id, kv_engine_version="auto"
    )
    denied_before = vault.request_count("sys/mounts/secret")
    ui_before = vault.request_count("sys/internal/ui/mounts/secret")
    # sys/mounts is denied to this policy; sys/internal/ui/mounts (the CLI's way) answers for any
    # token that may read under the mount.
    assert backend.get_variable(key) == "still-read"
    assert backend._detected_versions == {"secret": 2}
    assert vault.request_count("sys/mounts/secret") - denied_before == 1
    assert vault.request_count("sys/internal/ui/mounts/secret") - ui_before == 1


def test_kv_engine_version_auto_undetectable_falls_back_to_2(vault, make_backend, capfd):
    vault.client().sys.create_or_update_policy(
        name="no-mounts", policy='path "other/*" { capabilities = ["read"] }'
    )
    token = vault.client().auth.token.create(policies=["no-mounts"], ttl="1h")["auth"]["client_token"]
    backend = make_backend(token=token, kv_engine_version="auto")
    with capture_hook_log(backend, capfd) as log, pytest.raises(VaultBackendError, match="403"):
        backend.get_variable(_unique("denied"))
    assert backend._detected_versions == {"secret": 2}
    assert _warnings(log, "assuming version 2") == 1


def test_values_are_never_logged(vault, make_backend, approle, capfd):
    key = _unique("quiet")
    _put(vault, f"variables/{key}", value="never-in-the-log-1")
    _put(vault, f"connections/{key}", conn_uri="http://u:never-in-the-log-2@h:1")
    role_id, secret_id = approle["long"]
    backend = make_backend(auth_type="approle", role_id=role_id, secret_id=secret_id)
    if isinstance(backend.log, logging.Logger):
        backend.log.setLevel(logging.DEBUG)
    with capture_hook_log(backend, capfd) as log:
        backend.get_variable(key)
        backend.get_connection(key)
        backend.get_variable(_unique("missing"))
    assert "never-in-the-log" not in log.text
    assert secret_id not in log.text


def test_fallback_paths(vault, make_backend):
    key = _unique("fallback")
    _put(vault, f"variables/{key}", value="from-second")
    backend = make_backend(variables_path=["variables/teamx", "variables"])

    before = vault.request_count("secret/data/variables/", "read")
    assert backend.get_variable(key) == "from-second"
    assert vault.request_count("secret/data/variables/", "read") - before == 2


def test_mount_point_none_takes_mount_from_path(vault, make_backend):
    key = _unique("nomount")
    _put(vault, f"variables/{key}", value="v")
    backend = make_backend(mount_point=None, variables_path="secret/variables")
    assert backend.get_variable(key) == "v"


# -- auth ---------------------------------------------------------------------------------------


def test_approle_login(vault, make_backend, approle):
    key = _unique("approle")
    _put(vault, f"variables/{key}", value="via-approle")
    role_id, secret_id = approle["long"]
    backend = make_backend(auth_type="approle", role_id=role_id, secret_id=secret_id)

    before = vault.request_count("auth/approle/login")
    assert backend.get_variable(key) == "via-approle"
    assert backend.get_variable(_unique("absent")) is None
    assert vault.request_count("auth/approle/login") - before == 1


def test_userpass_login(vault, make_backend, userpass):
    key = _unique("userpass")
    _put(vault, f"variables/{key}", value="via-userpass")
    username, password = userpass
    backend = make_backend(auth_type="userpass", username=username, password=password)
    assert backend.get_variable(key) == "via-userpass"


def test_token_path(vault, make_backend, tmp_path):
    key = _unique("tokenfile")
    _put(vault, f"variables/{key}", value="via-token-file")
    token_file = tmp_path / "token"
    token_file.write_text(vault.token + "\n")
    assert make_backend(token_path=str(token_file)).get_variable(key) == "via-token-file"


def test_wrong_approle_secret_is_a_clear_error(vault, make_backend, approle):
    role_id, _ = approle["long"]
    backend = make_backend(auth_type="approle", role_id=role_id, secret_id="not-the-secret-id")
    with pytest.raises(VaultBackendError, match=r"auth_type='approle' at auth mount 'approle'"):
        backend.get_variable("anything")


def test_expired_token_relogs_in_with_approle(vault, make_backend, approle):
    key = _unique("expiry")
    _put(vault, f"variables/{key}", value="after-expiry")
    role_id, secret_id = approle["short"]  # tokens live 2 s
    backend = make_backend(auth_type="approle", role_id=role_id, secret_id=secret_id, cache_ttl_seconds=0)

    before = vault.request_count("auth/approle/login")
    assert backend.get_variable(key) == "after-expiry"
    time.sleep(3)
    assert backend.get_variable(key) == "after-expiry"
    assert vault.request_count("auth/approle/login") - before == 2


def test_expired_plain_token_names_the_auth_method(vault, make_backend, read_policy):
    key = _unique("expired_token")
    _put(vault, f"variables/{key}", value="x")
    token = vault.client().auth.token.create(policies=[read_policy], ttl="2s")["auth"]["client_token"]
    backend = make_backend(token=token, cache_ttl_seconds=0)
    assert backend.get_variable(key) == "x"
    time.sleep(3)
    with pytest.raises(VaultBackendError, match=r"403.*auth_type='token'"):
        backend.get_variable(key)


# -- request economy and caching ------------------------------------------------------------------


def test_repeated_lookups_cost_one_login_and_one_read_each(vault, make_backend, approle):
    conn_id = _unique("hot")
    _put(vault, f"connections/{conn_id}", conn_uri="http://u:hot-conn-pass@h:1")
    keys = [_unique(f"hot{i}") for i in range(5)]
    for key in keys:
        _put(vault, f"variables/{key}", value=f"value-of-{key}")
    role_id, secret_id = approle["long"]
    backend = make_backend(auth_type="approle", role_id=role_id, secret_id=secret_id)

    before_total = vault.request_count()
    before_login = vault.request_count("auth/approle/login")
    before_conn = vault.request_count(f"secret/data/connections/{conn_id}")
    before_vars = vault.request_count("secret/data/variables/")
    for _ in range(100):
        assert backend.get_connection(conn_id).password == "hot-conn-pass"
    for _ in range(3):
        assert [backend.get_variable(k) for k in keys] == [f"value-of-{k}" for k in keys]

    assert vault.request_count("auth/approle/login") - before_login == 1
    assert vault.request_count(f"secret/data/connections/{conn_id}") - before_conn == 1
    assert vault.request_count("secret/data/variables/") - before_vars == 5
    assert vault.request_count() - before_total <= 2 + 5


def test_threads_share_one_login_and_one_read_per_secret(vault, make_backend, approle):
    from concurrent.futures import ThreadPoolExecutor

    keys = [_unique(f"thread{i}") for i in range(4)]
    for key in keys:
        _put(vault, f"variables/{key}", value=f"value-of-{key}")
    role_id, secret_id = approle["long"]
    backend = make_backend(auth_type="approle", role_id=role_id, secret_id=secret_id)
    logins = vault.request_count("auth/approle/login")
    reads = vault.request_count("secret/data/variables/")

    def worker(index: int) -> list[str | None]:
        return [backend.get_variable(keys[(index + i) % len(keys)]) for i in range(40)]

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(worker, range(16)))

    for index, values in enumerate(results):
        assert values == [f"value-of-{keys[(index + i) % len(keys)]}" for i in range(40)]
    assert vault.request_count("auth/approle/login") - logins == 1
    assert vault.request_count("secret/data/variables/") - reads == len(keys)


def test_miss_is_cached_until_negative_ttl(vault, make_backend):
    key = _unique("miss")
    path = f"secret/data/variables/{key}"
    backend = make_backend(negative_cache_ttl_seconds=1)

    assert backend.get_variable(key) is None
    assert vault.request_count(path) == 1
    _put(vault, f"variables/{key}", value="appeared")
    assert backend.get_variable(key) is None  # the miss is still cached
    assert vault.request_count(path, "read") == 1
    time.sleep(1.2)
    assert backend.get_variable(key) == "appeared"
    assert vault.request_count(path, "read") == 2


def test_rotated_secret_visible_after_ttl(vault, make_backend):
    key = _unique("rotate")
    _put(vault, f"variables/{key}", value="old-value")
    backend = make_backend(cache_ttl_seconds=1)

    assert backend.get_variable(key) == "old-value"
    _put(vault, f"variables/{key}", value="new-value")
    assert backend.get_variable(key) == "old-value"
    time.sleep(1.2)
    assert backend.get_variable(key) == "new-value"


def test_cache_disabled(vault, make_backend):
    key = _unique("nocache")
    _put(vault, f"variables/{key}", value="v")
    backend = make_backend(cache_ttl_seconds=0)
    before = vault.request_count(f"secret/data/variables/{key}", "read")
    backend.get_variable(key)
    backend.get_variable(key)
    backend.get_variable(_unique("gone"))
    assert vault.request_count(f"secret/data/variables/{key}", "read") - before == 2


# -- Vault down -----------------------------------------------------------------------------------


def test_unreachable_returns_none_and_warns_once(capfd):
    backend = VaultBackend(url=f"http://127.0.0.1:{free_port()}", token="t", timeout=2)
    with capture_hook_log(backend, capfd) as log:
        assert backend.get_variable("a") is None
        assert backend.get_conn_value("b") is None
    assert _warnings(log, "is unreachable") == 1


def test_unreachable_vault_is_not_asked_again_until_the_retry_interval(capfd):
    """The circuit breaker: while Vault is down, lookups fall through at once instead of each
    paying a connection attempt (the stock backend keeps hammering it, apache/airflow#9713)."""
    import socket

    # A port that accepts nothing: a listening socket whose backlog is never served, so connects
    # wait for the timeout instead of failing fast.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    backend = VaultBackend(url=f"http://127.0.0.1:{blackhole.getsockname()[1]}", token="t", timeout=0.5)
    try:
        with capture_hook_log(backend, capfd) as log:
            started = time.monotonic()
            assert backend.get_variable("first") is None
            first = time.monotonic() - started
            started = time.monotonic()
            for i in range(50):
                assert backend.get_variable(f"next{i}") is None
            rest = time.monotonic() - started
        assert first >= 0.4
        assert rest < 0.25, f"50 lookups during the outage took {rest:.2f}s"
        assert _warnings(log, "is unreachable") == 1
    finally:
        blackhole.close()


def test_vault_stopped_mid_run_warns_serves_known_values_and_recovers(disposable_vault, capfd):
    server = disposable_vault.server
    server.client().secrets.kv.v2.create_or_update_secret(
        path="variables/known", secret={"value": "read-before-outage"}, mount_point="secret"
    )
    backend = VaultBackend(
        url=server.url, token=server.token, cache_ttl_seconds=0.5, unreachable_retry_seconds=0.5
    )
    assert backend.get_variable("known") == "read-before-outage"

    disposable_vault.stop()
    time.sleep(0.6)  # the cached value has expired
    with capture_hook_log(backend, capfd) as log:
        assert backend.get_variable("known") == "read-before-outage"  # stale, not lost
        assert backend.get_variable("never_read") is None  # falls through to the next backend
        assert backend.get_conn_value("some_conn") is None
    assert _warnings(log, "is unreachable") == 1
    assert "read-before-outage" not in log.text


def test_team_paths_are_tried_before_the_shared_one(vault, make_backend):
    team, key = _unique("team"), _unique("teamvar")
    _put(vault, f"variables/{team}/{key}", value="team-value")
    _put(vault, f"variables/{key}", value="shared-value")
    backend = make_backend()
    assert backend.get_variable(key, team_name=team) == "team-value"
    assert backend.get_variable(key) == "shared-value"
    assert make_backend(use_team_secrets_path=False).get_variable(key, team_name=team) == "shared-value"


def test_global_secrets_path_is_the_last_fallback(vault, make_backend):
    key = _unique("global")
    _put(vault, f"shared/{key}", value="from-global")
    assert make_backend(global_secrets_path="shared").get_variable(key) == "from-global"
    assert make_backend().get_variable(key) is None


def test_unreachable_raises_when_asked():
    backend = VaultBackend(
        url=f"http://127.0.0.1:{free_port()}", token="t", timeout=2, raise_on_unreachable=True
    )
    with pytest.raises(VaultUnreachableError, match="unreachable"):
        backend.get_variable("a")


def test_unreachable_with_approle_login_falls_through():
    backend = VaultBackend(
        url=f"http://127.0.0.1:{free_port()}", auth_type="approle", role_id="r", secret_id="s", timeout=2
    )
    assert backend.get_connection("x") is None


# -- configured through [secrets] backend ---------------------------------------------------------


def test_configured_as_airflow_secrets_backend(vault):
    key = _unique("configured")
    _put(vault, f"variables/{key}", value="from-config")
    _put(vault, f"connections/{key}", conn_type="http", host="api.example", extra='{"timeout": 5}')
    env = dict(
        os.environ,
        AIRFLOW__SECRETS__BACKEND="airflow_llm_provider.secrets.vault.VaultBackend",
        AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps(
            {"url": vault.url, "token": vault.token, "kv_engine_version": "auto", "cache_ttl_seconds": "60"}
        ),
    )
    code = (
        "from airflow.models import Variable\n"
        "from airflow.providers.common.compat.sdk import BaseHook\n"
        f"print(Variable.get({key!r}))\n"
        f"conn = BaseHook.get_connection({key!r})\n"
        "print(conn.host, conn.extra_dejson)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()  # Airflow 2 also logs "Retrieving connection" to stdout
    assert "from-config" in lines
    assert "api.example {'timeout': 5}" in lines
