"""VaultBackend: HashiCorp Vault / OpenBao KV secrets with one login per process and a TTL cache.

Configured like the hashicorp provider's backend (the same ``backend_kwargs``), so migrating is a
one-line class change::

    [secrets]
    backend = airflow_llm_provider.secrets.vault.VaultBackend
    backend_kwargs = {"url": "https://vault:8200", "auth_type": "approle", "role_id": "..."}

What differs from the stock backend:

* one ``hvac.Client`` per backend instance, created on first use; it logs in once, renews its
  token before it expires (or logs in again when the token cannot be renewed), and logs in again
  once when Vault answers 403 (a second 403 raises, naming the auth method and the path);
* a process-local, thread-safe TTL cache of hits (``cache_ttl_seconds``, 300) and misses
  (``negative_cache_ttl_seconds``, 30), keyed by (kind, path, key);
* Vault being unreachable logs one WARNING per minute and falls through to the next backend
  (``raise_on_unreachable=True`` raises instead); for ``unreachable_retry_seconds`` after that no
  lookup waits on Vault, and values read before the outage keep being served;
* ``kv_engine_version="auto"`` reads the mount's version from ``sys/mounts``;
* every value read is registered with Airflow's secrets masker; values are never logged.

hvac is imported inside methods only: this module is imported while Airflow loads its backends.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from airflow.providers.common.compat.sdk import AirflowException
from airflow.secrets import BaseSecretsBackend
from airflow.utils.log.logging_mixin import LoggingMixin

from airflow_llm_provider.secrets.vault_auth import (
    AUTH_KWARGS,
    AUTH_METHODS,
    AuthParams,
    VaultAuthConfigError,
    auth_method,
)

if TYPE_CHECKING:
    import hvac

SUPPORTED_AUTH_TYPES = tuple(AUTH_METHODS)
KV_ENGINE_VERSIONS = (1, 2, "auto")
UNREACHABLE_WARNING_INTERVAL = 60.0
# A token is renewed once this share of its TTL has passed (Vault Agent renews at about 2/3 too).
RENEW_AT_FRACTION = 2 / 3
# Options of the stock backend that this one accepts and passes to hvac.Client unchanged.
CLIENT_PASSTHROUGH_KWARGS = ("cert", "proxies", "session")
# Accepted for drop-in compatibility, with no effect here (documented in docs/vault.md).
IGNORED_STOCK_KWARGS = ("gcp_scopes", "azure_tenant_id", "radius_host", "radius_secret", "radius_port")


class VaultBackendError(AirflowException):
    """Vault refused the backend (bad credentials, denied path) or it is misconfigured."""


class VaultUnreachableError(VaultBackendError):
    """Vault could not be reached and ``raise_on_unreachable`` is set."""


def mask_secret(value: Any) -> None:
    """Register ``value`` with Airflow's secrets masker (task-sdk on Airflow 3, core on 2.x)."""
    try:
        from airflow.sdk.log import mask_secret as _mask
    except ImportError:  # Airflow 2.x
        from airflow.utils.log.secrets_masker import mask_secret as _mask  # type: ignore[no-redef]
    _mask(value)


def _mask_values(kind: str, data: dict[str, Any]) -> None:
    """Register a secret's values with the masker once, when read from Vault (the masker is
    process-wide, so cache hits need not register them again)."""
    if kind != "connection":
        value = data.get("value")
        if value is not None:
            mask_secret(value if isinstance(value, str) else json.dumps(value))
        return
    if "conn_uri" in data:
        uri = str(data["conn_uri"])
        mask_secret(uri)
        password = urlsplit(uri).password
        if password:
            mask_secret(unquote(password))
        return
    if data.get("password"):
        mask_secret(str(data["password"]))
    extra = data.get("extra")
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except ValueError:
            extra = None
    if isinstance(extra, dict):
        mask_secret(extra)  # masks values whose key looks sensitive, e.g. api_key


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    import hvac.exceptions
    import requests

    return (requests.exceptions.ConnectionError, requests.exceptions.Timeout, hvac.exceptions.VaultDown)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _as_paths(value: str | Sequence[str] | None) -> list[str]:
    """``None`` disables a kind; a string is one path; a list is tried in order."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    return [p.strip("/") for p in value]


def _retrying_session() -> Any:
    """A requests session that retries what Vault means as transient (5xx, 412 on replicas)."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    # connect=0: a closed port is an outage, which the circuit breaker handles without waiting.
    retry = Retry(
        total=3,
        connect=0,
        read=1,
        backoff_factor=0.1,
        status_forcelist=(412, 500, 502, 503),
        allowed_methods=None,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _TTLCache:
    """A process-local dict with per-entry expiry, safe to share between threads.

    Expired entries stay until replaced so that :meth:`stale` can serve a value while Vault is down.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str, str], tuple[float, Any]] = {}
        self._fill_locks: dict[tuple[str, str, str], threading.Lock] = {}

    def fill_lock(self, key: tuple[str, str, str]) -> threading.Lock:
        """The lock a thread holds while it fetches ``key`` (one per key, kept for reuse)."""
        with self._lock:
            return self._fill_locks.setdefault(key, threading.Lock())

    def get(self, key: tuple[str, str, str]) -> tuple[bool, Any]:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or time.monotonic() >= entry[0]:
            return False, None
        return True, entry[1]

    def stale(self, key: tuple[str, str, str]) -> Any:
        """The last value stored under ``key``, expired or not (None if none)."""
        with self._lock:
            entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: tuple[str, str, str], value: Any, ttl: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            self._entries[key] = (time.monotonic() + ttl, value)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclass
class _TokenLease:
    """When the current token was obtained and for how long Vault granted it."""

    obtained: float
    ttl: float
    renewable: bool

    @classmethod
    def from_auth(cls, response: Any) -> _TokenLease | None:
        auth = response.get("auth") if isinstance(response, dict) else None
        if not auth or not auth.get("lease_duration"):
            return None  # no expiry known (root or non-expiring token)
        return cls(time.monotonic(), float(auth["lease_duration"]), bool(auth.get("renewable")))

    def due(self) -> bool:
        return time.monotonic() - self.obtained >= self.ttl * RENEW_AT_FRACTION


class VaultBackend(BaseSecretsBackend, LoggingMixin):
    """
    Read connections, variables and config from a Vault (or OpenBao) KV secrets engine.

    A secret at ``<mount_point>/<connections_path>/<conn_id>`` holds either a ``conn_uri`` key (used
    verbatim) or the connection's fields (``conn_type``, ``host``, ``login``, ``password``, ``port``,
    ``schema``, ``extra``). Variables and config values are the ``value`` key of
    ``<variables_path>/<key>`` and ``<config_path>/<key>``.

    :param connections_path: path (or list of paths tried in order) under the mount for
        connections; ``None`` disables connection lookups.
    :param variables_path: the same for variables.
    :param config_path: the same for config values (``[section] option_secret = <key>``).
    :param use_team_secrets_path: with Airflow's multi-team mode, look in ``<path>/<team>`` before
        ``<path>`` for a team's connections and variables.
    :param global_secrets_path: one more path tried last for every kind (the stock backend's
        deprecated option).
    :param url: Vault address (default: ``VAULT_ADDR`` via hvac).
    :param mount_point: KV mount (default ``secret``); ``None`` means the first segment of each
        path is the mount.
    :param kv_engine_version: ``1``, ``2`` or ``"auto"`` (read from ``sys/mounts``; needs a token
        allowed to read it, otherwise 2 with a warning).
    :param auth_type: one of :data:`SUPPORTED_AUTH_TYPES` (default ``token``); each takes the
        hashicorp backend's parameters (``role_id``/``secret_id``, ``username``/``password``,
        ``kubernetes_role``/``kubernetes_jwt_path``, ``jwt_role``/``jwt_token``/``jwt_token_path``,
        ``key_id``/``secret_id``/``region`` …), see docs/vault.md.
    :param auth_mount_point: where the auth method is mounted (default: its name).
    :param token: token for ``token`` auth (default: ``VAULT_TOKEN`` via hvac).
    :param token_path: file holding the token; read at login and again after a 403.
    :param namespace: Vault Enterprise / OpenBao namespace.
    :param verify: TLS verification: a bool or a CA bundle path.
    :param timeout: seconds per HTTP request (default 30).
    :param cache_ttl_seconds: how long a found secret is served from memory (default 300; 0
        disables all caching, misses included).
    :param negative_cache_ttl_seconds: how long a miss is remembered (default 30; 0 disables).
    :param raise_on_unreachable: raise :class:`VaultUnreachableError` instead of returning None
        when Vault cannot be reached.
    :param unreachable_retry_seconds: after Vault was found unreachable, lookups skip it (serving
        values read before, else falling through) for this long (default 30; 0 tries every time).
    """

    def __init__(
        self,
        connections_path: str | Sequence[str] | None = "connections",
        variables_path: str | Sequence[str] | None = "variables",
        config_path: str | Sequence[str] | None = "config",
        use_team_secrets_path: bool = True,
        global_secrets_path: str | None = None,
        url: str | None = None,
        mount_point: str | None = "secret",
        kv_engine_version: int | str = 2,
        auth_type: str = "token",
        auth_mount_point: str | None = None,
        namespace: str | None = None,
        verify: bool | str | None = None,
        timeout: float = 30,
        cache_ttl_seconds: float = 300,
        negative_cache_ttl_seconds: float = 30,
        raise_on_unreachable: bool = False,
        unreachable_retry_seconds: float = 30,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        extra_paths = _as_paths(global_secrets_path)
        self.connections_paths = _as_paths(connections_path) + extra_paths
        self.variables_paths = _as_paths(variables_path) + extra_paths
        self.config_paths = _as_paths(config_path) + extra_paths
        self.use_team_secrets_path = _as_bool(use_team_secrets_path)
        self.url = url
        self.mount_point = mount_point.strip("/") if mount_point else None
        self.kv_engine_version = self._parse_kv_version(kv_engine_version)
        self.auth_type = (auth_type or "token").strip().lower()
        self._auth_params = AuthParams({name: kwargs.pop(name) for name in AUTH_KWARGS if name in kwargs})
        try:
            self._auth_method = auth_method(self.auth_type, self._auth_params)
        except VaultAuthConfigError as err:
            raise VaultBackendError(f"VaultBackend: {err}") from None
        self.auth_mount_point = (auth_mount_point or self.auth_type.replace("_iam", "")).strip("/")
        self.namespace = namespace
        self.verify = verify if verify is None or not isinstance(verify, str) else self._parse_verify(verify)
        self.timeout = float(timeout)
        self.cache_ttl_seconds = float(cache_ttl_seconds)
        self.negative_cache_ttl_seconds = (
            float(negative_cache_ttl_seconds) if self.cache_ttl_seconds > 0 else 0.0
        )
        self.raise_on_unreachable = _as_bool(raise_on_unreachable)
        self.unreachable_retry_seconds = float(unreachable_retry_seconds)
        self._client_kwargs = {k: kwargs.pop(k) for k in CLIENT_PASSTHROUGH_KWARGS if k in kwargs}
        unknown = sorted(set(kwargs) - set(IGNORED_STOCK_KWARGS))
        if unknown:
            self.log.warning("VaultBackend ignores these unknown backend_kwargs: %s", ", ".join(unknown))

        self._client: hvac.Client | None = None
        self._lease: _TokenLease | None = None
        self._client_lock = threading.RLock()
        self._detected_versions: dict[str, int] = {}
        self._cache = _TTLCache()
        self._outage_lock = threading.Lock()
        self._last_unreachable_warning: float | None = None
        self._skip_vault_until = 0.0

    # -- configuration ------------------------------------------------------------------------

    @staticmethod
    def _parse_kv_version(value: int | str) -> int | str:
        normalized: int | str = value
        if isinstance(value, str):
            text = value.strip().lower()
            normalized = int(text) if text.isdigit() else text
        if normalized not in KV_ENGINE_VERSIONS:
            raise ValueError(f"kv_engine_version must be 1, 2 or 'auto', got {value!r}")
        return normalized

    @staticmethod
    def _parse_verify(value: str) -> bool | str:
        lowered = value.strip().lower()
        if lowered in ("true", "false", "1", "0", "yes", "no"):
            return lowered in ("true", "1", "yes")
        return value

    # -- client and login ---------------------------------------------------------------------

    def _describe_auth(self) -> str:
        if self.auth_type == "token":
            token_path = self._auth_params.get("token_path")
            return "auth_type='token'" + (f" (token_path={token_path!r})" if token_path else "")
        return f"auth_type={self.auth_type!r} at auth mount {self.auth_mount_point!r}"

    @property
    def client(self) -> hvac.Client:
        """The logged-in hvac client: created on first use, its token renewed when due."""
        with self._client_lock:
            if self._client is None:
                self._client = self._login()
            elif self._lease is not None and self._lease.due():
                self._refresh_token(self._client)
            return self._client

    def _new_client(self) -> hvac.Client:
        import hvac

        kwargs: dict[str, Any] = dict(self._client_kwargs)
        kwargs.setdefault("session", _retrying_session())
        if self.verify is not None:
            kwargs["verify"] = self.verify
        return hvac.Client(url=self.url, timeout=self.timeout, namespace=self.namespace, **kwargs)

    def _login(self) -> hvac.Client:
        import hvac.exceptions

        client = self._new_client()
        self._lease = None
        login = self._auth_method.login
        try:
            if login is None:
                token = self._auth_params.get("token")
                if self._auth_params.get("token_path"):
                    with open(self._auth_params.get("token_path")) as handle:
                        token = handle.read().strip()
                if token:
                    client.token = token
                if not client.token:
                    raise VaultBackendError(
                        "VaultBackend auth_type='token' has no token: set token, token_path or VAULT_TOKEN"
                    )
            else:
                self._lease = _TokenLease.from_auth(login(client, self._auth_params, self.auth_mount_point))
        except VaultAuthConfigError as err:
            raise VaultBackendError(f"Vault login with {self._describe_auth()} failed: {err}") from None
        except hvac.exceptions.VaultDown:
            raise
        except hvac.exceptions.VaultError as err:
            raise VaultBackendError(
                f"Vault login failed: {self._describe_auth()} on {client.url} was rejected "
                f"({type(err).__name__}: {err}). Check the credentials and the auth mount."
            ) from err
        self.log.debug("Vault login done with %s", self._describe_auth())
        return client

    def _refresh_token(self, client: hvac.Client) -> None:
        """Renew the token before it expires; log in again when Vault will not extend it enough."""
        import hvac.exceptions

        lease = self._lease
        assert lease is not None
        if lease.renewable:
            try:
                renewed = _TokenLease.from_auth(client.auth.token.renew_self())
            except hvac.exceptions.VaultDown:
                raise
            except hvac.exceptions.VaultError as err:
                self.log.info("Vault token renewal refused (%s); logging in again", type(err).__name__)
            else:
                # Capped by the token's max TTL: a renewal that barely helps means log in instead.
                if renewed is not None and renewed.ttl >= lease.ttl / 2:
                    self._lease = renewed
                    self.log.debug("Vault token renewed for %.0f s", renewed.ttl)
                    return
        self._client = self._login()

    def _with_relogin(self, what: str, call: Callable[[hvac.Client], Any]) -> Any:
        """Run ``call`` with the client; on a 403 log in again once and retry."""
        import hvac.exceptions

        client = self.client
        try:
            return call(client)
        except hvac.exceptions.Forbidden:
            self.log.info("Vault answered 403 for %s; logging in again with %s", what, self._describe_auth())
        with self._client_lock:
            if self._client is client:  # another thread may have logged in already
                self._client = None
        try:
            return call(self.client)
        except hvac.exceptions.Forbidden as err:
            raise VaultBackendError(
                f"Vault denied {what} (403) even after a fresh login with {self._describe_auth()}: "
                "the token has expired too fast or its policy does not grant read on that path."
            ) from err

    # -- KV access ----------------------------------------------------------------------------

    def _split(self, path: str, key: str) -> tuple[str, str]:
        full = f"{path}/{key}" if path else key
        if self.mount_point:
            return self.mount_point, full
        mount, _, rest = full.partition("/")
        return mount, rest

    def _engine_version(self, mount: str) -> int:
        if self.kv_engine_version != "auto":
            return int(self.kv_engine_version)
        with self._client_lock:
            if mount not in self._detected_versions:
                self._detected_versions[mount] = self._detect_version(mount)
            return self._detected_versions[mount]

    def _detect_version(self, mount: str) -> int:
        """Read the mount's KV version: ``sys/mounts/<mount>``, else ``sys/internal/ui/mounts/<mount>``."""
        import hvac.exceptions

        client = self.client  # login errors propagate
        errors: list[str] = []
        for endpoint in (f"sys/mounts/{mount}", f"sys/internal/ui/mounts/{mount}"):
            try:
                response = client.adapter.get(f"/v1/{endpoint}")
            except hvac.exceptions.VaultDown:
                raise
            except hvac.exceptions.VaultError as err:
                errors.append(f"{endpoint}: {type(err).__name__}")
                continue
            body = response if isinstance(response, dict) else {}
            data = body.get("data") or body
            version = str((data.get("options") or {}).get("version") or "1")
            detected = 2 if version == "2" else 1
            self.log.debug("Vault mount %r is KV version %d (from %s)", mount, detected, endpoint)
            return detected
        self.log.warning(
            "kv_engine_version='auto' could not read the KV version of mount %r (%s); assuming version 2. "
            "Grant the token read on sys/mounts/%s or set kv_engine_version explicitly.",
            mount,
            "; ".join(errors),
            mount,
        )
        return 2

    def _read(self, path: str, key: str) -> dict[str, Any] | None:
        import hvac.exceptions

        mount, secret_path = self._split(path, key)
        version = self._engine_version(mount)

        def read(client: hvac.Client) -> dict[str, Any] | None:
            try:
                if version == 1:
                    response = client.secrets.kv.v1.read_secret(path=secret_path, mount_point=mount)
                    return response["data"]
                response = client.secrets.kv.v2.read_secret_version(
                    path=secret_path, mount_point=mount, raise_on_deleted_version=True
                )
                return response["data"]["data"]
            except hvac.exceptions.InvalidPath:
                return None

        return self._with_relogin(f"{mount}/{secret_path}", read)

    def _team_paths(self, paths: list[str], team_name: str | None) -> list[str]:
        if not team_name or not self.use_team_secrets_path:
            return paths
        return [p for path in paths for p in (f"{path}/{team_name}" if path else team_name, path)]

    def _lookup(self, kind: str, paths: list[str], key: str) -> dict[str, Any] | None:
        """The secret for ``key`` from the first of ``paths`` that has it (cached), else None."""
        for path in paths:
            cache_key = (kind, path, key)
            hit, data = self._cache.get(cache_key)
            if not hit:
                # One thread reads a missing key; the others wait and take its answer from the cache.
                with self._cache.fill_lock(cache_key):
                    hit, data = self._cache.get(cache_key)
                    if not hit:
                        data = self._fetch(kind, path, key)
            if data is not None:
                return data
        return None

    def _fetch(self, kind: str, path: str, key: str) -> dict[str, Any] | None:
        """Read one secret from Vault and cache the answer; during an outage, the last known value."""
        cache_key = (kind, path, key)
        if time.monotonic() < self._skip_vault_until:
            return self._cache.stale(cache_key)  # Vault is down: serve what it said last, if anything
        try:
            data = self._read(path, key)
        except _unreachable_errors() as err:
            self._on_unreachable(err, kind, key)
            return self._cache.stale(cache_key)
        if data is not None:
            _mask_values(kind, data)
        self._cache.put(
            cache_key, data, self.cache_ttl_seconds if data is not None else self.negative_cache_ttl_seconds
        )
        return data

    def _on_unreachable(self, err: BaseException, kind: str, key: str) -> None:
        cause = f"{type(err).__name__}: {err}"
        if self.raise_on_unreachable:
            raise VaultUnreachableError(
                f"Vault at {self.url or '$VAULT_ADDR'} is unreachable while reading {kind} {key!r} ({cause})"
            ) from err
        now = time.monotonic()
        with self._outage_lock:
            self._skip_vault_until = now + self.unreachable_retry_seconds
            last = self._last_unreachable_warning
            quiet = last is not None and now - last < UNREACHABLE_WARNING_INTERVAL
            if not quiet:
                self._last_unreachable_warning = now
        if quiet:
            self.log.debug("Vault still unreachable; %s %r falls through to the next backend", kind, key)
            return
        self.log.warning(
            "Vault at %s is unreachable (%s); %s %r and further lookups fall through to the next secrets "
            "backend (values read before are still served). Vault is tried again in %d s; this warning "
            "repeats at most every %d s.",
            self.url or "$VAULT_ADDR",
            cause,
            kind,
            key,
            int(self.unreachable_retry_seconds),
            int(UNREACHABLE_WARNING_INTERVAL),
        )

    def clear_cache(self) -> None:
        """Forget every cached hit and miss (the login is kept)."""
        self._cache.clear()

    # -- BaseSecretsBackend -------------------------------------------------------------------

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        """A connection URI (``conn_uri``) or the JSON of the connection's fields, or None."""
        data = self._lookup("connection", self._team_paths(self.connections_paths, team_name), conn_id)
        if data is None:
            return None
        if "conn_uri" in data:
            return str(data["conn_uri"])
        return json.dumps(data)

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        """The ``value`` of ``<variables_path>/<key>``, or None."""
        return self._value("variable", self._team_paths(self.variables_paths, team_name), key)

    def get_config(self, key: str) -> str | None:
        """The ``value`` of ``<config_path>/<key>``, or None."""
        return self._value("config", self.config_paths, key)

    def _value(self, kind: str, paths: list[str], key: str) -> str | None:
        data = self._lookup(kind, paths, key)
        if data is None:
            return None
        if "value" not in data:
            self.log.warning(
                "Vault secret for %s %r has no 'value' key (keys: %s); ignoring it",
                kind,
                key,
                ", ".join(sorted(data)),
            )
            return None
        value = data["value"]
        return value if isinstance(value, str) else json.dumps(value)
