"""VaultBackend: HashiCorp Vault / OpenBao KV secrets with one login per process and a TTL cache.

Configured like the hashicorp provider's backend (same ``backend_kwargs`` names for the options it
supports), so migrating is a one-line class change::

    [secrets]
    backend = airflow_llm_provider.secrets.vault.VaultBackend
    backend_kwargs = {"url": "https://vault:8200", "auth_type": "approle", "role_id": "..."}

What differs from the stock backend:

* one ``hvac.Client`` per backend instance, created on first use; it logs in once and only logs in
  again when Vault answers 403 (a second 403 raises, naming the auth method and the path);
* a process-local, thread-safe TTL cache of hits (``cache_ttl_seconds``, 300) and misses
  (``negative_cache_ttl_seconds``, 30), keyed by (kind, path, key);
* Vault being unreachable logs one WARNING per minute and falls through to the next backend
  (``raise_on_unreachable=True`` raises instead); rejected credentials raise a clear error;
* ``kv_engine_version="auto"`` reads the mount's version from ``sys/mounts``;
* every value read is registered with Airflow's secrets masker; values are never logged.

hvac is imported inside methods only: this module is imported while Airflow loads its backends.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from airflow.providers.common.compat.sdk import AirflowException
from airflow.secrets import BaseSecretsBackend
from airflow.utils.log.logging_mixin import LoggingMixin

if TYPE_CHECKING:
    import hvac

SUPPORTED_AUTH_TYPES = ("token", "approle", "userpass")
KV_ENGINE_VERSIONS = (1, 2, "auto")
UNREACHABLE_WARNING_INTERVAL = 60.0
# Options of the stock backend that this one accepts and passes to hvac.Client unchanged.
CLIENT_PASSTHROUGH_KWARGS = ("cert", "proxies", "session")


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


class _TTLCache:
    """A process-local dict with per-entry expiry, safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str, str], tuple[float, Any]] = {}

    def get(self, key: tuple[str, str, str]) -> tuple[bool, Any]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False, None
            expires, value = entry
            if time.monotonic() >= expires:
                del self._entries[key]
                return False, None
            return True, value

    def put(self, key: tuple[str, str, str], value: Any, ttl: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            self._entries[key] = (time.monotonic() + ttl, value)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


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
    :param url: Vault address (default: ``VAULT_ADDR`` via hvac).
    :param mount_point: KV mount (default ``secret``); ``None`` means the first segment of each
        path is the mount.
    :param kv_engine_version: ``1``, ``2`` or ``"auto"`` (read from ``sys/mounts``; needs a token
        allowed to read it, otherwise 2 with a warning).
    :param auth_type: ``token`` (default), ``approle`` or ``userpass``.
    :param auth_mount_point: where the auth method is mounted (default: its name).
    :param token: token for ``token`` auth (default: ``VAULT_TOKEN`` via hvac).
    :param token_path: file holding the token; read at login and again after a 403.
    :param role_id: AppRole role id.
    :param secret_id: AppRole secret id.
    :param username: userpass user.
    :param password: userpass password.
    :param namespace: Vault Enterprise / OpenBao namespace.
    :param verify: TLS verification: a bool or a CA bundle path.
    :param timeout: seconds per HTTP request (default 30).
    :param cache_ttl_seconds: how long a found secret is served from memory (default 300; 0
        disables all caching, misses included).
    :param negative_cache_ttl_seconds: how long a miss is remembered (default 30; 0 disables).
    :param raise_on_unreachable: raise :class:`VaultUnreachableError` instead of returning None
        when Vault cannot be reached.
    """

    def __init__(
        self,
        connections_path: str | Sequence[str] | None = "connections",
        variables_path: str | Sequence[str] | None = "variables",
        config_path: str | Sequence[str] | None = "config",
        url: str | None = None,
        mount_point: str | None = "secret",
        kv_engine_version: int | str = 2,
        auth_type: str = "token",
        auth_mount_point: str | None = None,
        token: str | None = None,
        token_path: str | None = None,
        role_id: str | None = None,
        secret_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        namespace: str | None = None,
        verify: bool | str | None = None,
        timeout: float = 30,
        cache_ttl_seconds: float = 300,
        negative_cache_ttl_seconds: float = 30,
        raise_on_unreachable: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.connections_paths = _as_paths(connections_path)
        self.variables_paths = _as_paths(variables_path)
        self.config_paths = _as_paths(config_path)
        self.url = url
        self.mount_point = mount_point.strip("/") if mount_point else None
        self.kv_engine_version = self._parse_kv_version(kv_engine_version)
        self.auth_type = (auth_type or "token").strip().lower()
        if self.auth_type not in SUPPORTED_AUTH_TYPES:
            raise NotImplementedError(
                f"VaultBackend auth_type={auth_type!r} is not supported by "
                f"airflow_llm_provider.secrets.vault.VaultBackend; supported: "
                f"{', '.join(SUPPORTED_AUTH_TYPES)}. Use the hashicorp provider's backend for other methods."
            )
        self.auth_mount_point = (auth_mount_point or self.auth_type).strip("/")
        self.token = token
        self.token_path = token_path
        self.role_id = role_id
        self.secret_id = secret_id
        self.username = username
        self.password = password
        self.namespace = namespace
        self.verify = verify if verify is None or not isinstance(verify, str) else self._parse_verify(verify)
        self.timeout = float(timeout)
        self.cache_ttl_seconds = float(cache_ttl_seconds)
        self.negative_cache_ttl_seconds = (
            float(negative_cache_ttl_seconds) if self.cache_ttl_seconds > 0 else 0.0
        )
        self.raise_on_unreachable = _as_bool(raise_on_unreachable)
        self._client_kwargs = {k: kwargs.pop(k) for k in CLIENT_PASSTHROUGH_KWARGS if k in kwargs}
        if kwargs:
            self.log.warning(
                "VaultBackend ignores these backend_kwargs (not supported): %s", ", ".join(sorted(kwargs))
            )
        self._check_auth_params()

        self._client: hvac.Client | None = None
        self._client_lock = threading.RLock()
        self._detected_versions: dict[str, int] = {}
        self._cache = _TTLCache()
        self._warning_lock = threading.Lock()
        self._last_unreachable_warning: float | None = None

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

    def _check_auth_params(self) -> None:
        missing: list[str] = []
        if self.auth_type == "approle" and not self.role_id:
            missing.append("role_id")
        if self.auth_type == "userpass":
            missing += [name for name in ("username", "password") if not getattr(self, name)]
        if missing:
            raise VaultBackendError(f"VaultBackend auth_type={self.auth_type!r} needs {', '.join(missing)}")

    # -- client and login ---------------------------------------------------------------------

    def _describe_auth(self) -> str:
        if self.auth_type == "token":
            return "auth_type='token'" + (f" (token_path={self.token_path!r})" if self.token_path else "")
        return f"auth_type={self.auth_type!r} at auth mount {self.auth_mount_point!r}"

    @property
    def client(self) -> hvac.Client:
        """The logged-in hvac client (created and logged in on first use)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._login()
            return self._client

    def _login(self) -> hvac.Client:
        import hvac
        import hvac.exceptions

        kwargs: dict[str, Any] = dict(self._client_kwargs)
        if self.verify is not None:
            kwargs["verify"] = self.verify
        client = hvac.Client(url=self.url, timeout=self.timeout, namespace=self.namespace, **kwargs)
        try:
            if self.auth_type == "token":
                token = self.token
                if self.token_path:
                    with open(self.token_path) as handle:
                        token = handle.read().strip()
                if token:
                    client.token = token
                if not client.token:
                    raise VaultBackendError(
                        "VaultBackend auth_type='token' has no token: set token, token_path or VAULT_TOKEN"
                    )
            elif self.auth_type == "approle":
                client.auth.approle.login(
                    role_id=self.role_id, secret_id=self.secret_id, mount_point=self.auth_mount_point
                )
            else:
                client.auth.userpass.login(
                    username=self.username, password=self.password, mount_point=self.auth_mount_point
                )
        except hvac.exceptions.VaultDown:
            raise
        except hvac.exceptions.VaultError as err:
            raise VaultBackendError(
                f"Vault login failed: {self._describe_auth()} on {client.url} was rejected "
                f"({type(err).__name__}: {err}). Check the credentials and the auth mount."
            ) from err
        self.log.debug("Vault login done with %s", self._describe_auth())
        return client

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

    def _lookup(self, kind: str, paths: list[str], key: str) -> dict[str, Any] | None:
        """The secret for ``key`` from the first of ``paths`` that has it (cached), else None."""
        for path in paths:
            cache_key = (kind, path, key)
            hit, data = self._cache.get(cache_key)
            if not hit:
                try:
                    data = self._read(path, key)
                except _unreachable_errors() as err:
                    self._on_unreachable(err, kind, key)
                    return None
                ttl = self.cache_ttl_seconds if data is not None else self.negative_cache_ttl_seconds
                self._cache.put(cache_key, data, ttl)
            if data is not None:
                return data
        return None

    def _on_unreachable(self, err: BaseException, kind: str, key: str) -> None:
        cause = f"{type(err).__name__}: {err}"
        if self.raise_on_unreachable:
            raise VaultUnreachableError(
                f"Vault at {self.url or '$VAULT_ADDR'} is unreachable while reading {kind} {key!r} ({cause})"
            ) from err
        now = time.monotonic()
        with self._warning_lock:
            last = self._last_unreachable_warning
            quiet = last is not None and now - last < UNREACHABLE_WARNING_INTERVAL
            if not quiet:
                self._last_unreachable_warning = now
        if quiet:
            self.log.debug("Vault still unreachable; %s %r falls through to the next backend", kind, key)
            return
        self.log.warning(
            "Vault at %s is unreachable (%s); %s %r and further lookups fall through to the next secrets "
            "backend. This warning repeats at most every %d s.",
            self.url or "$VAULT_ADDR",
            cause,
            kind,
            key,
            int(UNREACHABLE_WARNING_INTERVAL),
        )

    def clear_cache(self) -> None:
        """Forget every cached hit and miss (the login is kept)."""
        self._cache.clear()

    # -- BaseSecretsBackend -------------------------------------------------------------------

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        """A connection URI (``conn_uri``) or the JSON of the connection's fields, or None."""
        data = self._lookup("connection", self.connections_paths, conn_id)
        if data is None:
            return None
        if "conn_uri" in data:
            uri = str(data["conn_uri"])
            mask_secret(uri)
            password = urlsplit(uri).password
            if password:
                mask_secret(unquote(password))
            return uri
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
        return json.dumps(data)

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        """The ``value`` of ``<variables_path>/<key>``, or None."""
        return self._value("variable", self.variables_paths, key)

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
        text = value if isinstance(value, str) else json.dumps(value)
        mask_secret(text)
        return text
