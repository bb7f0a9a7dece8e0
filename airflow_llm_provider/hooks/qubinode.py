"""QubinodeHook: kcli on a Qubinode hypervisor, over SSH (default) or on the Airflow machine.

A ``qubinode`` connection names the hypervisor (``host``, SSH ``login``/``port``/key, as the ssh
provider understands them, or ``extra.ssh_conn_id`` to reuse an ``ssh`` connection) and how kcli runs
there (``extra.mode``, ``kcli_path``, ``kcli_client``, ``use_sudo``). Every command is an argument list;
only when it has to cross SSH is it turned into one shell line, each item quoted with ``shlex.quote``,
so VM names and parameters never reach a shell unquoted. Host keys are verified by default.

paramiko, wtforms and flask_appbuilder are imported inside functions only: this module is imported
while DAGs are parsed.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, BaseHook

from airflow_llm_provider.deployments.kcli_args import (
    KcliArgumentError,
    check_kcli_value,
    params_problems,
    value_problem,
)
from airflow_llm_provider.get_provider_info import QUBINODE_CONNECTION_TYPE

if TYPE_CHECKING:
    import paramiko

CONN_TYPE = "qubinode"
DEFAULT_CONN_ID = "qubinode_default"
MODES = ("ssh", "local")
HOST_KEY_POLICIES = ("verify", "accept_new")
DEFAULT_CONN_TIMEOUT = 10
TEST_CONNECTION_TIMEOUT = 60
SSH_DEFAULT_PORT = 22
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
STDERR_TAIL = 2000

# -P keys whose values are never logged nor put into exception messages.
SECRET_PARAM = re.compile(r"pass|secret|token|credential|api_?key|private|auth", re.IGNORECASE)
PARAM_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_OR_PARAM_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
# kcli names: plans, clusters, kube kinds, pipeline components (path segments below pipelines_dir).
KUBE_KIND = re.compile(r"^[a-z][a-z0-9_-]*$")
COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*$")
PIPELINE_ACTIONS = ("create", "delete", "status")
UP_STATUSES = ("up", "running")
TRUE_WORDS = ("true", "yes", "1", "on")
FALSE_WORDS = ("false", "no", "0", "off")

# The connection form is declared once, in the provider registry (Airflow >= 3.2 reads it there);
# the Airflow 2 form methods below are built from the same dicts.
CONN_FIELDS: dict[str, dict[str, Any]] = QUBINODE_CONNECTION_TYPE["conn-fields"]
UI_FIELD_BEHAVIOUR: dict[str, Any] = QUBINODE_CONNECTION_TYPE["ui-field-behaviour"]
HOOK_NAME: str = QUBINODE_CONNECTION_TYPE["hook-name"]


# ------------------------------------------------------------------------------------------ exceptions


class QubinodeError(AirflowException):
    """Base class of everything this hook raises on purpose."""


class QubinodeConfigError(QubinodeError, ValueError):
    """The connection or an argument is invalid (nothing was run)."""


class QubinodeConnectionError(QubinodeError):
    """The hypervisor could not be reached over SSH (refused, timed out, unknown host...)."""


class QubinodeHostKeyError(QubinodeConnectionError):
    """The SSH host key is unknown or does not match: the connection was refused on our side."""


class QubinodeAuthenticationError(QubinodeConnectionError):
    """The SSH server refused our credentials."""


class QubinodeCommandError(QubinodeError):
    """A command ran and failed: carries the command (secrets redacted), exit code and stderr."""

    def __init__(
        self,
        command: str,
        returncode: int | None,
        stderr: str = "",
        stdout: str = "",
        message: str | None = None,
    ) -> None:
        self.command = command
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout
        if message is None:
            detail = (stderr.strip() or stdout.strip())[-STDERR_TAIL:]
            message = f"Command failed with exit code {returncode}: {command}"
            if detail:
                message += f"\n{detail}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.command, self.returncode, self.stderr, self.stdout, str(self)))


class KcliNotFoundError(QubinodeCommandError):
    """kcli (or sudo) is not installed where the command ran."""


class QubinodeVMNotFound(QubinodeError):
    """The named VM does not exist on the hypervisor."""

    def __init__(self, name: str, where: str = "") -> None:
        self.name = name
        super().__init__(f"VM {name!r} not found{' on ' + where if where else ''}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name,))


class QubinodeNotFound(QubinodeError):
    """A named plan or cluster does not exist on the hypervisor."""

    def __init__(self, kind: str, name: str, where: str = "") -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"{kind.capitalize()} {name!r} not found{' on ' + where if where else ''}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.kind, self.name))


# ------------------------------------------------------------------------------------------ data types


@dataclass(frozen=True)
class CommandResult:
    """What one command returned. ``command`` is the redacted, printable form."""

    command: str
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class QubinodeSettings:
    """The connection, resolved: everything needed to run a command on the hypervisor."""

    conn_id: str
    mode: str
    kcli_path: str
    kcli_client: str | None
    use_sudo: bool
    pipelines_dir: str | None
    navigator_dir: str | None
    host: str | None
    port: int
    login: str
    password: str | None
    key_file: str | None
    private_key: str | None
    private_key_passphrase: str | None
    host_key: str | None
    known_hosts: str | None
    host_key_policy: str
    conn_timeout: float
    cmd_timeout: float | None
    ssh_conn_id: str | None

    @property
    def target(self) -> str:
        if self.mode == "local":
            return f"the Airflow machine (as {self.login})"
        return f"{self.login}@{self.host}:{self.port}"

    def __repr__(self) -> str:  # never print credentials
        return f"QubinodeSettings(conn_id={self.conn_id!r}, mode={self.mode!r}, target={self.target!r})"


# --------------------------------------------------------------------------------------------- helpers


def _extra(extra: Mapping[str, Any], name: str) -> Any:
    """An extra by name; also accepts the ``extra__qubinode__<name>`` form old UIs stored."""
    value = extra.get(name)
    if value is None:
        value = extra.get(f"extra__{CONN_TYPE}__{name}")
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
    return value


def _to_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise QubinodeConfigError(f"{what} must be true or false, not {value!r}")


def _to_float(value: Any, what: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise QubinodeConfigError(f"{what} must be a number of seconds, not {value!r}") from None
    return number if number > 0 else None


def check_value(value: Any, what: str) -> str:
    """A value that is an argv item of its own (a name, an option's value, a path): non-empty text,
    not option-like, no control, format or separator character (``deployments/kcli_args.py``).

    Anything else (shell metacharacters included) reaches kcli as one literal argv item, quoted with
    ``shlex.quote`` over SSH; kcli itself decides what it accepts.
    """
    try:
        return check_kcli_value(value, what)
    except KcliArgumentError as err:
        raise QubinodeConfigError(str(err)) from None


def check_vm_name(name: Any) -> str:
    """Refuse names kcli would misread: empty, option-like, or with characters that do not print."""
    return check_value(name, "VM name")


def check_name(name: Any, what: str) -> str:
    """A plan or cluster name: the same rules as a VM name."""
    return check_value(name, f"{what} name")


def check_path(value: Any, what: str) -> str:
    """A path-like argument: the same rules as a name."""
    return check_value(value, what)


def env_assignments(variables: Mapping[str, Any]) -> list[str]:
    """``KEY=value`` items for ``env`` (keys checked; values as text, booleans as true/false)."""
    items = []
    for key, value in variables.items():
        if not isinstance(key, str) or not ENV_KEY.match(key):
            raise QubinodeConfigError(f"Invalid environment variable name {key!r}")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif value is None:
            text = ""
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            text = json.dumps(value, separators=(",", ":"))
        if "\0" in text:
            raise QubinodeConfigError(f"Environment variable {key!r} contains a NUL")
        items.append(f"{key}={text}")
    return items


def normalize_status(status: str) -> str:
    """kcli reports ``up``; ``running`` (libvirt, other tools) means the same."""
    status = (status or "").strip().lower()
    return "up" if status in UP_STATUSES else status


def vm_ip(vm: Mapping[str, Any]) -> str | None:
    """The first IP kcli reports for a VM (``ip``, else the first of ``ips``)."""
    ip = vm.get("ip")
    if not ip and isinstance(vm.get("ips"), list) and vm["ips"]:
        ip = vm["ips"][0]
    return str(ip) if ip else None


def _as_list_of_dicts(data: Any, key: str) -> list[dict[str, Any]]:
    """kcli's list answers: a list of dicts, or a dict keyed by name (older versions)."""
    if data is None:
        return []
    if isinstance(data, dict):
        data = [{key: k, **v} if isinstance(v, dict) else {key: k, "value": v} for k, v in data.items()]
    if not isinstance(data, list):
        return []
    return [entry for entry in data if isinstance(entry, dict)]


def format_param(key: str, value: Any) -> str:
    """One kcli ``-P key=value`` item. Lists/dicts become JSON (which kcli's YAML parser reads).

    No string in ``value``, at any depth, may hold a control, format or separator character (the
    message names the key and the character, never the value: it may be a password)."""
    if not isinstance(key, str) or not PARAM_KEY.match(key):
        raise QubinodeConfigError(f"Invalid kcli parameter name {key!a}")
    problems = params_problems({key: value}, "kcli parameter")
    if problems:
        raise QubinodeConfigError("; ".join(problems))
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    elif isinstance(value, int | float):
        text = str(value)
    else:
        text = json.dumps(value, separators=(",", ":"))  # ASCII-only: nothing unprintable survives
    return f"{key}={text}"


def _redact_extra_vars(text: str) -> str:
    """An ansible ``--extra-vars`` JSON with the values of secret-looking keys replaced by ``***``."""
    try:
        data = json.loads(text)
    except ValueError:
        return text

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: "***" if SECRET_PARAM.search(str(k)) else scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    return json.dumps(scrub(data), separators=(",", ":"))


def redact(argv: Sequence[str]) -> list[str]:
    """``argv`` with secret values replaced by ``***``.

    Covers kcli ``-P key=value`` items, ``env KEY=value`` assignments and ``--option=value`` items
    whose key looks secret (``*password*``, ``*token*``...), and secret keys inside an ansible
    ``--extra-vars`` JSON.
    """
    out: list[str] = []
    previous = ""
    for item in argv:
        key = item.split("=", 1)[0]
        if previous in ("-e", "--extra-vars") and item.startswith("{"):
            item = _redact_extra_vars(item)
        elif "=" in item and SECRET_PARAM.search(key) and ENV_OR_PARAM_KEY.match(key.lstrip("-")):
            item = f"{key}=***"
        out.append(item)
        previous = item
    return out


def parse_json_output(stdout: str, command: str) -> Any:
    """kcli's ``-o json`` answer; tolerant of warning lines printed before the JSON."""
    text = stdout.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for index, char in enumerate(text):
        if char in "[{":
            try:
                return decoder.raw_decode(text[index:])[0]
            except ValueError:
                continue
    raise QubinodeCommandError(
        command, 0, stdout=stdout, message=f"kcli did not answer JSON to: {command}\n{text[:500]}"
    )


def _fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == SSH_DEFAULT_PORT else f"[{host}]:{port}"


# ------------------------------------------------------------------------------------------------ hook


class QubinodeHook(BaseHook):
    """
    Run kcli on a Qubinode hypervisor described by a ``qubinode`` connection.

    Over SSH (``extra.mode = "ssh"``, the default) the hook connects with paramiko to ``host`` as
    ``login``, verifying the host key against ``extra.known_hosts`` (default ``~/.ssh/known_hosts``)
    and/or ``extra.host_key``; ``extra.mode = "local"`` runs kcli on the Airflow worker instead.

    :param qubinode_conn_id: connection id (``qubinode_default``, e.g. from
        ``AIRFLOW_CONN_QUBINODE_DEFAULT``).
    :param cmd_timeout: seconds one command may run, overriding ``extra.cmd_timeout``.
    :param kcli_client: kcli ``-C`` client, overriding ``extra.kcli_client`` (one connection to the
        hypervisor then reaches ``aws``, ``gcp``, ``azure``... as configured in ``~/.kcli/config.yml``).
    """

    conn_name_attr = "qubinode_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = HOOK_NAME

    def __init__(
        self,
        qubinode_conn_id: str = DEFAULT_CONN_ID,
        cmd_timeout: float | None = None,
        kcli_client: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.qubinode_conn_id = qubinode_conn_id
        self._cmd_timeout_override = cmd_timeout
        if kcli_client is not None:
            check_name(kcli_client, "kcli client")
        self._kcli_client_override = kcli_client
        self._ssh_client: paramiko.SSHClient | None = None

    # ------------------------------------------------------------------------------ connection form

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields of the connection form on Airflow 2.x (3.2+ reads ``conn-fields``)."""
        from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, PasswordField, StringField
        from wtforms.validators import NumberRange, Optional

        widgets: dict[str, Any] = {}
        for name, spec in CONN_FIELDS.items():
            types = spec["schema"]["type"]
            label = lazy_gettext(spec["label"])
            if "integer" in types:
                widgets[name] = IntegerField(
                    label,
                    widget=BS3TextFieldWidget(),
                    validators=[Optional(strip_whitespace=True), NumberRange(min=1)],
                    description=spec["description"],
                )
            elif spec["schema"].get("format") == "password":
                widgets[name] = PasswordField(
                    label, widget=BS3PasswordFieldWidget(), description=spec["description"]
                )
            else:
                widgets[name] = StringField(
                    label, widget=BS3TextFieldWidget(), description=spec["description"]
                )
        return widgets

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and placeholder fields of the connection form on Airflow 2.x."""
        return {
            "hidden_fields": list(UI_FIELD_BEHAVIOUR["hidden-fields"]),
            "relabeling": dict(UI_FIELD_BEHAVIOUR["relabeling"]),
            "placeholders": dict(UI_FIELD_BEHAVIOUR["placeholders"]),
        }

    # ------------------------------------------------------------------------------------- settings

    @cached_property
    def settings(self) -> QubinodeSettings:
        """The connection resolved once per hook (and the ``ssh_conn_id`` one, if named)."""
        conn = self.get_connection(self.qubinode_conn_id)
        extra: dict[str, Any] = dict(conn.extra_dejson or {})
        mode = (_extra(extra, "mode") or "ssh").lower()
        if mode not in MODES:
            raise QubinodeConfigError(
                f"Connection {self.qubinode_conn_id!r}: extra mode must be one of {MODES}, not {mode!r}"
            )
        policy = (_extra(extra, "host_key_policy") or "verify").lower().replace("-", "_")
        if policy not in HOST_KEY_POLICIES:
            raise QubinodeConfigError(
                f"Connection {self.qubinode_conn_id!r}: extra host_key_policy must be one of "
                f"{HOST_KEY_POLICIES}, not {policy!r} (host key verification cannot be switched off)"
            )

        host, port, login, password = conn.host, conn.port, conn.login, conn.password
        ssh_extra: dict[str, Any] = {}
        ssh_conn_id = _extra(extra, "ssh_conn_id")
        if ssh_conn_id:
            ssh_conn = self.get_connection(ssh_conn_id)
            ssh_extra = dict(ssh_conn.extra_dejson or {})
            host = ssh_conn.host or host
            port = ssh_conn.port or port
            login = ssh_conn.login or login
            password = ssh_conn.password or password
            if str(ssh_extra.get("no_host_key_check", "")).lower() == "true" and policy == "verify":
                self.log.warning(
                    "SSH connection %r sets no_host_key_check: unknown host keys are accepted and "
                    "recorded (host_key_policy=accept_new); changed keys are still refused.",
                    ssh_conn_id,
                )
                policy = "accept_new"

        def ssh_setting(name: str) -> Any:
            value = _extra(ssh_extra, name) if ssh_extra else None
            return value if value is not None else _extra(extra, name)

        if mode == "local":
            user = getpass.getuser()
            is_root = os.geteuid() == 0
        else:
            if not host:
                raise QubinodeConfigError(
                    f"Connection {self.qubinode_conn_id!r} has no host: set the hypervisor in host, "
                    "name an ssh connection in extra ssh_conn_id, or set extra mode to 'local'"
                )
            user = login or getpass.getuser()
            is_root = user == "root"
        use_sudo_raw = _extra(extra, "use_sudo")
        if use_sudo_raw is None or str(use_sudo_raw).lower() == "auto":
            use_sudo = not is_root
        else:
            use_sudo = _to_bool(use_sudo_raw, f"Connection {self.qubinode_conn_id!r}: extra use_sudo")

        key_file = ssh_setting("key_file")
        private_key = ssh_setting("private_key")
        if key_file and private_key:
            raise QubinodeConfigError(
                f"Connection {self.qubinode_conn_id!r}: set key_file or private_key, not both"
            )
        conn_timeout = _to_float(ssh_setting("conn_timeout"), "conn_timeout") or DEFAULT_CONN_TIMEOUT
        cmd_timeout = self._cmd_timeout_override
        if cmd_timeout is None:
            cmd_timeout = _to_float(_extra(extra, "cmd_timeout"), "cmd_timeout")
        return QubinodeSettings(
            conn_id=self.qubinode_conn_id,
            mode=mode,
            kcli_path=_extra(extra, "kcli_path") or "kcli",
            kcli_client=self._kcli_client_override or _extra(extra, "kcli_client"),
            use_sudo=use_sudo,
            pipelines_dir=_extra(extra, "pipelines_dir"),
            navigator_dir=_extra(extra, "navigator_dir"),
            host=host,
            port=int(port or SSH_DEFAULT_PORT),
            login=user,
            password=password or None,
            key_file=os.path.expanduser(key_file) if key_file else None,
            private_key=private_key,
            private_key_passphrase=ssh_setting("private_key_passphrase"),
            host_key=ssh_setting("host_key"),
            known_hosts=_extra(extra, "known_hosts"),
            host_key_policy=policy,
            conn_timeout=conn_timeout,
            cmd_timeout=cmd_timeout,
            ssh_conn_id=ssh_conn_id,
        )

    @property
    def use_sudo(self) -> bool:
        return self.settings.use_sudo

    @property
    def pipelines_dir(self) -> str | None:
        return self.settings.pipelines_dir

    @property
    def navigator_dir(self) -> str | None:
        return self.settings.navigator_dir

    # ---------------------------------------------------------------------------------- SSH session

    def get_conn(self) -> paramiko.SSHClient | None:
        """The connected paramiko ``SSHClient`` (cached per hook); ``None`` in local mode."""
        if self.settings.mode == "local":
            return None
        client = self._ssh_client
        if client is not None:
            transport = client.get_transport()
            if transport is not None and transport.is_active():
                return client
            client.close()
        self._ssh_client = self._connect()
        return self._ssh_client

    def close(self) -> None:
        if self._ssh_client is not None:
            self._ssh_client.close()
            self._ssh_client = None

    def __enter__(self) -> QubinodeHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _known_hosts_file(self) -> Path:
        return Path(os.path.expanduser(self.settings.known_hosts or "~/.ssh/known_hosts"))

    def _load_pkey(self) -> paramiko.PKey | None:
        import io

        import paramiko

        s = self.settings
        if not s.private_key:
            return None
        for loader in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
            try:
                return loader.from_private_key(io.StringIO(s.private_key), password=s.private_key_passphrase)
            except (paramiko.SSHException, ValueError):
                continue
        raise QubinodeConfigError(
            f"Connection {s.conn_id!r}: extra private_key is not a readable Ed25519, ECDSA or RSA key "
            "(paste the whole key, BEGIN/END lines included, or use key_file)"
        )

    def _connect(self) -> paramiko.SSHClient:
        import paramiko

        s = self.settings
        assert s.host is not None
        known_hosts = self._known_hosts_file()
        name = _known_hosts_name(s.host, s.port)
        sources = []
        client = paramiko.SSHClient()
        if known_hosts.is_file():
            client.load_host_keys(str(known_hosts))
            sources.append(str(known_hosts))
        if not s.known_hosts and Path(SYSTEM_KNOWN_HOSTS).is_file():
            client.load_system_host_keys(SYSTEM_KNOWN_HOSTS)
            sources.append(SYSTEM_KNOWN_HOSTS)
        if s.host_key:
            parts = s.host_key.split()
            key_type, key_data = (parts[0], parts[1]) if len(parts) >= 2 else ("ssh-rsa", parts[0])
            key_classes = {"ssh-ed25519": paramiko.Ed25519Key, "ssh-rsa": paramiko.RSAKey}
            try:
                key_class = key_classes.get(key_type) or (
                    paramiko.ECDSAKey if key_type.startswith("ecdsa-sha2-") else None
                )
                if key_class is None:
                    raise ValueError(f"unsupported key type {key_type!r}")
                pinned = key_class(data=base64.b64decode(key_data))
            except Exception as err:
                raise QubinodeConfigError(
                    f"Connection {s.conn_id!r}: host_key {s.host_key[:40]!r}... is not a public key "
                    f"('<type> <base64>', e.g. 'ssh-ed25519 AAAA...'): {err}"
                ) from None
            client.get_host_keys().add(name, pinned.get_name(), pinned)
            sources.append("the connection's host_key")
        client.set_missing_host_key_policy(self._missing_host_key_policy(known_hosts, sources))

        pkey = self._load_pkey()
        explicit_credentials = bool(pkey or s.key_file or s.password)
        target = f"{s.login}@{s.host}:{s.port}"
        try:
            client.connect(
                hostname=s.host,
                port=s.port,
                username=s.login,
                password=s.password,
                pkey=pkey,
                key_filename=s.key_file,
                passphrase=s.private_key_passphrase,
                timeout=s.conn_timeout,
                banner_timeout=s.conn_timeout,
                auth_timeout=s.conn_timeout,
                look_for_keys=not explicit_credentials,
                allow_agent=not explicit_credentials,
            )
        except QubinodeHostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as err:
            client.close()
            raise QubinodeHostKeyError(
                f"SSH host key mismatch for {name}: the server presented {err.key.get_name()} "
                f"{_fingerprint(err.key)} but {' and '.join(sources) or 'known_hosts'} expects "
                f"{_fingerprint(err.expected_key)}. The host may have been reinstalled, or someone is "
                "intercepting the connection; refusing to connect. If the change is expected, replace "
                "the entry (ssh-keygen -R) or the connection's host_key."
            ) from None
        except paramiko.AuthenticationException as err:
            client.close()
            raise QubinodeAuthenticationError(
                f"SSH authentication refused for {target}: {err} Check the login and the key "
                f"(key_file / private_key) or password of connection {s.ssh_conn_id or s.conn_id!r}."
            ) from None
        except paramiko.SSHException as err:
            client.close()
            raise QubinodeConnectionError(f"Cannot connect to {target} over SSH: {err}") from None
        except OSError as err:  # refused (NoValidConnectionsError), timeout, DNS
            client.close()
            if isinstance(err, paramiko.ssh_exception.NoValidConnectionsError):
                reason = "connection refused (is sshd running, and is the port right?)"
            elif isinstance(err, TimeoutError):
                reason = f"timed out after {s.conn_timeout:g}s"
            else:
                reason = str(err) or type(err).__name__
            raise QubinodeConnectionError(f"Cannot connect to {target} over SSH: {reason}") from None
        return client

    def _missing_host_key_policy(
        self, known_hosts: Path, sources: list[str]
    ) -> paramiko.MissingHostKeyPolicy:
        import paramiko

        hook = self
        policy = self.settings.host_key_policy

        class _Policy(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
                fingerprint = f"{key.get_name()} {_fingerprint(key)}"
                if policy == "accept_new":
                    client.get_host_keys().add(hostname, key.get_name(), key)
                    try:
                        known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                        with known_hosts.open("a") as handle:
                            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
                    except OSError as err:
                        hook.log.warning("Could not record the host key in %s: %s", known_hosts, err)
                    hook.log.warning(
                        "Accepted the new SSH host key of %s (%s) and recorded it in %s "
                        "(host_key_policy=accept_new).",
                        hostname,
                        fingerprint,
                        known_hosts,
                    )
                    return
                where = " and ".join(sources) or f"{known_hosts} (which does not exist)"
                raise QubinodeHostKeyError(
                    f"Unknown SSH host key for {hostname} ({fingerprint}): it is not in {where}. "
                    f"Verify it, then add it (ssh-keyscan -p {hook.settings.port} {hook.settings.host} >> "
                    f"{known_hosts}) or pin it in the connection's host_key extra; or set extra "
                    "host_key_policy to 'accept_new' to trust a host on first use."
                )

        return _Policy()

    # ----------------------------------------------------------------------------------- run commands

    def kcli_argv(self, *args: Any, json_output: bool = False) -> list[str]:
        """The kcli argument list for ``args``, with the connection's ``-C`` client and ``-o json``."""
        s = self.settings
        argv = [os.path.expanduser(s.kcli_path) if s.mode == "local" else s.kcli_path]
        if s.kcli_client:
            argv += ["-C", check_value(s.kcli_client, "kcli_client")]
        if json_output:
            argv += ["-o", "json"]
        argv += [str(a) for a in args]
        # Defence in depth: every kcli command is built here, right before it runs, so whatever
        # path a value took (a verb method, run_kcli, a rendered template), nothing that does not
        # print reaches kcli. Option-like items are the callers' to check: "-P", "-y" are meant.
        for index, item in enumerate(argv):
            problem = value_problem(item, option_like_ok=True)
            if problem is not None:
                raise QubinodeConfigError(f"kcli argument {index} {problem}; nothing was run")
        return argv

    def full_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as it is executed: behind ``sudo -n`` when the connection asks for sudo."""
        return (["sudo", "-n"] if self.settings.use_sudo else []) + [str(a) for a in argv]

    def command_line(self, argv: Sequence[str]) -> str:
        """The single shell line sent over SSH: every item quoted with ``shlex.quote``."""
        return shlex.join(self.full_argv(argv))

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        check: bool = True,
        stream: bool = False,
    ) -> CommandResult:
        """Run ``argv`` on the hypervisor (or locally) and return its exit code and output.

        :param check: raise :class:`QubinodeCommandError` on a nonzero exit code.
        :param stream: log every output line as it arrives (long deploy scripts and playbooks show
            their progress in the task log); the whole output is still returned.
        :raises KcliNotFoundError: the program (kcli or sudo) does not exist there; always raised.
        """
        s = self.settings
        full = self.full_argv(argv)
        shown = shlex.join(redact(full))
        timeout = timeout if timeout is not None else s.cmd_timeout
        self.log.info("Running on %s: %s", s.target, shown)
        lines = _LineLogger(self.log) if stream else None
        if s.mode == "local":
            result = self._run_local(full, shown, timeout, lines)
        else:
            result = self._run_ssh(self.command_line(argv), shown, timeout, lines)
        if lines is not None:
            lines.flush()
        program_missing = self._missing_program(result, [str(a) for a in argv])
        if program_missing:
            raise KcliNotFoundError(
                result.command, result.returncode, result.stderr, result.stdout, message=program_missing
            )
        if check and result.returncode != 0:
            raise QubinodeCommandError(result.command, result.returncode, result.stderr, result.stdout)
        return result

    def _missing_program(self, result: CommandResult, argv: list[str]) -> str | None:
        """A message when the exit says the program (kcli, sudo...) is missing, else ``None``.

        For ``env [--chdir=D] K=V... program ...`` the program is the one env runs; then only env's
        own message counts (a script's exit 127 is the script's business).
        """
        if result.returncode not in (1, 126, 127):
            return None
        wrapped = bool(argv) and argv[0] == "env"
        program = _program_of(argv)
        candidates = ["sudo", program] if self.settings.use_sudo else [program]
        reasons = "command not found|not found|No such file or directory|Permission denied"
        for candidate in candidates:
            pattern = rf"(^|\s|['\u2018]){re.escape(candidate)}['\u2019]?: ({reasons})"
            if re.search(pattern, result.stderr, re.MULTILINE):
                return self._not_found_message(candidate, result)
        if result.returncode == 127 and not self.settings.use_sudo and not wrapped:
            return self._not_found_message(program, result)  # the shell's "not found" code
        return None

    def _not_found_message(self, program: str, result: CommandResult) -> str:
        where = self.settings.target
        detail = result.stderr.strip()[-300:]
        if program == "sudo":
            return (
                f"sudo not found on {where} (exit {result.returncode}: {detail}). Install sudo, log in "
                "as root, or set extra use_sudo to false."
            )
        if Path(program).name != Path(self.settings.kcli_path).name:
            return (
                f"{Path(program).name} not found: {program!r} is not an executable program on {where} "
                f"(exit {result.returncode}: {detail}). Install it there (non-interactive SSH sessions "
                "do not read ~/.bashrc, so ~/.local/bin may be missing from PATH)."
            )
        return (
            f"kcli not found: {program!r} is not an executable program on {where} "
            f"(exit {result.returncode}: {detail}). Install kcli there, or set extra kcli_path to its "
            "full path (non-interactive SSH sessions do not read ~/.bashrc, so ~/.local/bin may be "
            "missing from PATH)."
        )

    def _run_local(
        self, full: list[str], shown: str, timeout: float | None, lines: _LineLogger | None = None
    ) -> CommandResult:
        try:
            if lines is None:
                completed = subprocess.run(
                    full, capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout, check=False
                )
                returncode, stdout, stderr = completed.returncode, completed.stdout, completed.stderr
            else:
                returncode, stdout, stderr = _stream_process(full, timeout, lines)
        except FileNotFoundError as err:
            missing = err.filename or full[0]
            result = CommandResult(shown, 127, "", f"{missing}: No such file or directory")
            raise KcliNotFoundError(
                shown, 127, result.stderr, message=self._not_found_message(str(missing), result)
            ) from None
        except PermissionError as err:
            raise KcliNotFoundError(
                shown, 126, str(err), message=f"Cannot execute {full[0]!r} on {self.settings.target}: {err}"
            ) from None
        except subprocess.TimeoutExpired as err:
            raise QubinodeCommandError(
                shown,
                None,
                _decode(err.stderr),
                _decode(err.output),
                message=f"Command timed out after {timeout:g}s: {shown}",
            ) from None
        return CommandResult(shown, returncode, _decode(stdout), _decode(stderr))

    def _run_ssh(
        self, line: str, shown: str, timeout: float | None, lines: _LineLogger | None = None
    ) -> CommandResult:
        import selectors

        client = self.get_conn()
        assert client is not None
        transport = client.get_transport()
        assert transport is not None
        channel = transport.open_session(timeout=self.settings.conn_timeout)
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout if timeout else None
        try:
            channel.exec_command(line)
            channel.shutdown_write()
            with selectors.DefaultSelector() as selector:
                selector.register(channel, selectors.EVENT_READ)
                while True:
                    while channel.recv_ready():
                        chunk = channel.recv(65536)
                        out += chunk
                        if lines is not None:
                            lines.feed("stdout", chunk)
                    while channel.recv_stderr_ready():
                        chunk = channel.recv_stderr(65536)
                        err += chunk
                        if lines is not None:
                            lines.feed("stderr", chunk)
                    done = channel.exit_status_ready() and (channel.eof_received or channel.closed)
                    if done and not channel.recv_ready() and not channel.recv_stderr_ready():
                        break
                    wait = 0.5
                    if deadline is not None:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise QubinodeCommandError(
                                shown,
                                None,
                                _decode(bytes(err)),
                                _decode(bytes(out)),
                                message=f"Command timed out after {timeout:g}s on "
                                f"{self.settings.target}: {shown}",
                            )
                        wait = min(wait, remaining)
                    selector.select(wait)
            returncode = channel.recv_exit_status()
        finally:
            channel.close()
        return CommandResult(shown, returncode, _decode(bytes(out)), _decode(bytes(err)))

    # ------------------------------------------------------------------------------------------ kcli

    def run_kcli(self, *args: Any, json_output: bool = False, timeout: float | None = None) -> Any:
        """Run ``kcli [-C client] [-o json] *args``; return parsed JSON, or stdout as text.

        :raises QubinodeCommandError: nonzero exit (``KcliNotFoundError`` when kcli is missing).
        """
        argv = self.kcli_argv(*args, json_output=json_output)
        result = self.run(argv, timeout=timeout)
        if json_output:
            return parse_json_output(result.stdout, result.command)
        return result.stdout

    def list_vms(self) -> list[dict[str, Any]]:
        """``kcli -o json list vm``: one dict per VM (``name``, ``status``, ``ip``, ``image``, ...)."""
        data = self.run_kcli("list", "vm", json_output=True)
        if data is None:
            return []
        if isinstance(data, dict):  # some kcli versions key VMs by name
            data = [{"name": k, **v} if isinstance(v, dict) else {"name": k} for k, v in data.items()]
        if not isinstance(data, list):
            raise QubinodeCommandError(
                shlex.join(self.kcli_argv("list", "vm", json_output=True)),
                0,
                message=f"kcli list vm answered {type(data).__name__}, not a list",
            )
        return [vm for vm in data if isinstance(vm, dict)]

    def get_vm(self, name: str) -> dict[str, Any] | None:
        """``kcli -o json info vm NAME``; ``None`` when the VM does not exist."""
        check_vm_name(name)
        result = self.run(self.kcli_argv("info", "vm", name, json_output=True), check=False)
        if result.returncode == 0:
            data = parse_json_output(result.stdout, result.command)
            if isinstance(data, list):  # defensively: one entry per name asked
                data = next((d for d in data if isinstance(d, dict) and d.get("name") == name), None)
            return data or None
        if "not found" in (result.stderr + result.stdout).lower():
            return None
        # kcli's exit 1 may mean "not found" without saying so; the list tells.
        if any(vm.get("name") == name for vm in self.list_vms()):
            raise QubinodeCommandError(result.command, result.returncode, result.stderr, result.stdout)
        return None

    def vm_exists(self, name: str) -> bool:
        return self.get_vm(name) is not None

    def create_vm(
        self,
        name: str,
        image: str | None = None,
        profile: str | None = None,
        params: Mapping[str, Any] | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Create VM ``name`` from an image or a profile, unless it exists; return its info.

        Idempotent: an existing VM of that name is returned as is (nothing is created or changed).

        :param params: kcli parameters, each passed as ``-P key=value`` (e.g. ``memory``, ``numcpus``,
            ``disks`` = ``[10, 20]``, ``nets``, ``start`` = ``False``).
        :param wait: pass ``--wait`` (kcli waits for cloud-init; needs a usable SSH key on the host).
        """
        check_vm_name(name)
        if image and profile:
            raise QubinodeConfigError("create_vm takes an image or a profile, not both")
        # Every value is checked before kcli is asked anything, the existence lookup included.
        args: list[str] = ["create", "vm"]
        if image:
            args += ["-i", check_value(image, "image")]
        if profile:
            args += ["-p", check_value(profile, "profile")]
        for key, value in (params or {}).items():
            args += ["-P", format_param(key, value)]
        if wait:
            args.append("--wait")
        args.append(name)
        existing = self.get_vm(name)
        if existing is not None:
            self.log.info("VM %r already exists on %s: not creating it again.", name, self.settings.target)
            return existing
        self.run_kcli(*args, timeout=timeout)
        created = self.get_vm(name)
        if created is None:  # e.g. kcli exits 0 when genisoimage is missing
            raise QubinodeCommandError(
                shlex.join(redact(self.kcli_argv(*args))),
                0,
                message=f"kcli reported success creating VM {name!r}, but the VM does not exist on "
                f"{self.settings.target}. Check kcli's output and the hypervisor (e.g. genisoimage).",
            )
        return created

    def delete_vm(self, name: str, missing_ok: bool = False) -> bool:
        """Delete VM ``name`` (always ``-y`` and the explicit name). Return whether it existed.

        :raises QubinodeVMNotFound: the VM does not exist and ``missing_ok`` is false.
        """
        check_vm_name(name)
        if self.get_vm(name) is None:
            if missing_ok:
                self.log.info("VM %r does not exist on %s: nothing to delete.", name, self.settings.target)
                return False
            raise QubinodeVMNotFound(name, self.settings.target)
        self.run_kcli("delete", "vm", "-y", name)
        return True

    def _vm_action(self, verb: str, name: str) -> dict[str, Any]:
        check_vm_name(name)
        try:
            self.run_kcli(verb, "vm", name)
        except KcliNotFoundError:
            raise
        except QubinodeCommandError:
            if self.get_vm(name) is None:
                raise QubinodeVMNotFound(name, self.settings.target) from None
            raise
        return self.get_vm(name) or {"name": name}

    def start_vm(self, name: str) -> dict[str, Any]:
        """``kcli start vm NAME``; return the VM's info afterwards."""
        return self._vm_action("start", name)

    def stop_vm(self, name: str) -> dict[str, Any]:
        """``kcli stop vm NAME``; return the VM's info afterwards."""
        return self._vm_action("stop", name)

    def restart_vm(self, name: str) -> dict[str, Any]:
        """``kcli restart vm NAME``; return the VM's info afterwards."""
        return self._vm_action("restart", name)

    # --------------------------------------------------------------------------------- VM readiness

    def get_vm_ip(self, name: str) -> str | None:
        """The VM's IP as kcli reports it (``None`` until DHCP or the guest agent reports one)."""
        vm = self.get_vm(name)
        if vm is None:
            raise QubinodeVMNotFound(name, self.settings.target)
        return vm_ip(vm)

    def port_open(self, address: str, port: int = SSH_DEFAULT_PORT, timeout: float = 5.0) -> bool:
        """Whether ``address:port`` accepts TCP connections *as seen from the hypervisor*.

        Over SSH this asks sshd for a ``direct-tcpip`` channel (what ``ssh -W`` does), so VMs on the
        hypervisor's private libvirt network are checked from where they are reachable, and no shell
        runs. In local mode it is a plain TCP connect from this machine.
        """
        import ipaddress
        import socket

        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise QubinodeConfigError(f"Not an IP address: {address!r}") from None
        if self.settings.mode == "local":
            try:
                with socket.create_connection((address, int(port)), timeout=timeout):
                    return True
            except OSError:
                return False
        import paramiko

        client = self.get_conn()
        assert client is not None
        transport = client.get_transport()
        assert transport is not None
        try:
            channel = transport.open_channel(
                "direct-tcpip", (address, int(port)), ("127.0.0.1", 0), timeout=timeout
            )
        except (paramiko.ChannelException, paramiko.SSHException, OSError, EOFError) as err:
            self.log.debug("%s:%s not reachable from %s: %s", address, port, self.settings.target, err)
            return False
        channel.close()
        return True

    def check_vm(
        self,
        name: str,
        target_status: str = "up",
        require_ip: bool = False,
        ssh_port: int | None = None,
        missing_ok: bool = True,
    ) -> tuple[bool, str, dict[str, Any] | None]:
        """One readiness probe: ``(ready, why_not_or_ok, info)``.

        ``running`` is accepted as ``up`` (kcli reports ``up``; other tools say running).
        :param missing_ok: a missing VM is "not ready yet" instead of :class:`QubinodeVMNotFound`.
        """
        wanted = normalize_status(target_status)
        vm = self.get_vm(name)
        if vm is None:
            if missing_ok:
                return False, f"VM {name!r} does not exist (yet)", None
            raise QubinodeVMNotFound(name, self.settings.target)
        status = normalize_status(str(vm.get("status", "")))
        if status != wanted:
            return False, f"VM {name!r} is {vm.get('status')!r}, waiting for {wanted!r}", vm
        ip = vm_ip(vm)
        if (require_ip or ssh_port) and not ip:
            return False, f"VM {name!r} is {status} but has no IP yet", vm
        if ssh_port and ip and not self.port_open(ip, ssh_port):
            return False, f"VM {name!r} has IP {ip} but port {ssh_port} does not answer yet", vm
        return True, f"VM {name!r} is {status}" + (f" with IP {ip}" if ip else ""), vm

    # ---------------------------------------------------------------------------------------- plans

    def list_plans(self) -> list[dict[str, Any]]:
        """``kcli -o json list plan``: one dict per plan (``plan`` or ``name``, ``vms``)."""
        return _as_list_of_dicts(self.run_kcli("list", "plan", json_output=True), "plan")

    def get_plan(self, plan: str) -> dict[str, Any] | None:
        """The plan's entry of ``list plan``, or ``None``."""
        check_name(plan, "plan")
        for entry in self.list_plans():
            if plan in (entry.get("plan"), entry.get("name")):
                return entry
        return None

    def create_plan(
        self,
        plan: str,
        file: str | None = None,
        params: Mapping[str, Any] | None = None,
        paramfile: str | None = None,
        url: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """``kcli create plan -f FILE [-P k=v]... PLAN``; return the plan's ``list plan`` entry.

        kcli itself skips VMs of the plan that already exist, so running it again (a retry after a
        partial failure) completes the plan instead of duplicating it.

        :param file: the plan file *on the hypervisor* (Jinja-rendered by kcli with ``params``).
        :param url: a plan URL instead of a file (``-u``).
        """
        check_name(plan, "plan")
        if bool(file) == bool(url):
            raise QubinodeConfigError("create_plan takes a plan file or a url, exactly one")
        args: list[str] = ["create", "plan"]
        if file:
            args += ["-f", check_path(file, "plan file")]
        if url:
            args += ["-u", check_path(url, "plan url")]
        if paramfile:
            args += ["--paramfile", check_path(paramfile, "paramfile")]
        for key, value in (params or {}).items():
            args += ["-P", format_param(key, value)]
        args.append(plan)
        self.run(self.kcli_argv(*args), timeout=timeout, stream=True)
        created = self.get_plan(plan)
        if created is None:
            raise QubinodeCommandError(
                shlex.join(redact(self.kcli_argv(*args))),
                0,
                message=f"kcli reported success creating plan {plan!r}, but no such plan exists on "
                f"{self.settings.target}.",
            )
        return created

    def delete_plan(self, plan: str, missing_ok: bool = False) -> bool:
        """``kcli delete plan -y PLAN`` (its VMs included). Return whether the plan existed."""
        check_name(plan, "plan")
        if self.get_plan(plan) is None:
            if missing_ok:
                self.log.info("Plan %r does not exist on %s: nothing to delete.", plan, self.settings.target)
                return False
            raise QubinodeNotFound("plan", plan, self.settings.target)
        self.run(self.kcli_argv("delete", "plan", "-y", plan), stream=True)
        return True

    # ----------------------------------------------------------------------------------------- kube

    def list_kubes(self) -> list[dict[str, Any]]:
        """``kcli -o json list kube``: one dict per cluster (``cluster`` or ``name``, ``type``...)."""
        return _as_list_of_dicts(self.run_kcli("list", "kube", json_output=True), "cluster")

    def get_kube(self, cluster: str) -> dict[str, Any] | None:
        check_name(cluster, "cluster")
        for entry in self.list_kubes():
            if cluster in (entry.get("cluster"), entry.get("name")):
                return entry
        return None

    def create_kube(
        self,
        cluster: str,
        kind: str = "generic",
        paramfile: str | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """``kcli create kube KIND [--paramfile F] [-P k=v]... CLUSTER``, unless the cluster exists.

        :param kind: ``openshift``, ``generic``, ``k3s``, ``rke2``, ``microshift``, ``hypershift``,
            ``aks``, ``eks``, ``gke``... (kcli decides which it knows).
        :param params: e.g. ``{"ctlplanes": 3, "workers": 2, "version": "stable", "tag": "4.16"}``;
            secrets such as ``pull_secret`` are better given as a path in ``paramfile``.
        :return: the cluster's ``list kube`` entry.
        """
        check_name(cluster, "cluster")
        if not isinstance(kind, str) or not KUBE_KIND.match(kind):
            raise QubinodeConfigError(f"Invalid kube kind {kind!a} (e.g. generic, openshift, k3s)")
        args: list[str] = ["create", "kube", kind]
        if paramfile:
            args += ["--paramfile", check_path(paramfile, "paramfile")]
        for key, value in (params or {}).items():
            args += ["-P", format_param(key, value)]
        args.append(cluster)
        existing = self.get_kube(cluster)
        if existing is not None:
            self.log.info(
                "Cluster %r already exists on %s: not creating it again.", cluster, self.settings.target
            )
            return existing
        self.run(self.kcli_argv(*args), timeout=timeout, stream=True)
        created = self.get_kube(cluster)
        if created is None:
            raise QubinodeCommandError(
                shlex.join(redact(self.kcli_argv(*args))),
                0,
                message=f"kcli reported success creating cluster {cluster!r}, but no such cluster "
                f"exists on {self.settings.target}.",
            )
        return created

    def delete_kube(self, cluster: str, missing_ok: bool = False) -> bool:
        """``kcli delete kube -y CLUSTER``. Return whether the cluster existed."""
        check_name(cluster, "cluster")
        if self.get_kube(cluster) is None:
            if missing_ok:
                self.log.info(
                    "Cluster %r does not exist on %s: nothing to delete.", cluster, self.settings.target
                )
                return False
            raise QubinodeNotFound("cluster", cluster, self.settings.target)
        self.run(self.kcli_argv("delete", "kube", "-y", cluster), stream=True)
        return True

    # ----------------------------------------------------------------------- scripts and playbooks

    def pipeline_script_path(
        self, component: str, script: str = "deploy.sh", base_dir: str | None = None
    ) -> str:
        """``<base_dir or pipelines_dir>/<component>/<script>`` on the host (component validated)."""
        if not isinstance(component, str) or not COMPONENT.match(component) or ".." in component.split("/"):
            raise QubinodeConfigError(
                f"Invalid component {component!r}: a directory name (or a/b path) below pipelines_dir"
            )
        if not isinstance(script, str) or not COMPONENT.match(script):
            raise QubinodeConfigError(f"Invalid script name {script!r}")
        base = base_dir or self.settings.pipelines_dir
        if not base:
            raise QubinodeConfigError(
                f"Connection {self.qubinode_conn_id!r} has no extra pipelines_dir (the qubinode-pipelines "
                "checkout on the host) and no base_dir was given"
            )
        return f"{base.rstrip('/')}/{component}/{script}"

    def run_pipeline_script(
        self,
        component: str,
        action: str = "create",
        env: Mapping[str, Any] | None = None,
        script: str = "deploy.sh",
        base_dir: str | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run a kcli-pipelines component script, the way Qubinode's DAGs do.

        Runs ``<pipelines_dir>/<component>/deploy.sh`` with ``bash`` in the component's directory,
        with ``ACTION=<action>``, ``CICD_PIPELINE=true`` and ``env`` (e.g. ``VM_NAME``,
        ``VM_PROFILE``, ``COMMUNITY_VERSION``, ``TARGET_SERVER``) set inline through ``env`` (an
        SSH server only passes the variables its ``AcceptEnv`` allows). Output lines stream into
        the log. A missing script is a clear error before anything runs.
        """
        if action not in PIPELINE_ACTIONS:
            raise QubinodeConfigError(f"action must be one of {PIPELINE_ACTIONS}, not {action!r}")
        path = self.pipeline_script_path(component, script, base_dir)
        directory = path.rsplit("/", 1)[0]
        variables = {"ACTION": action, "CICD_PIPELINE": "true", **{k: v for k, v in (env or {}).items()}}
        probe = self.run(["test", "-f", path], check=False)
        if probe.returncode != 0:
            raise QubinodeConfigError(
                f"Pipeline script {path} does not exist on {self.settings.target} (component "
                f"{component!r}; pipelines_dir comes from the connection's extra)"
            )
        argv = ["env", f"--chdir={directory}", *env_assignments(variables), "bash", path]
        return self.run(argv, timeout=timeout, stream=True)

    def run_playbook(
        self,
        playbook: str,
        inventory: str | None = None,
        extra_vars: Mapping[str, Any] | None = None,
        limit: str | None = None,
        tags: Sequence[str] | None = None,
        vault_password_file: str | None = None,
        check: bool = False,
        cwd: str | None = None,
        ansible_playbook: str = "ansible-playbook",
        env: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """``ansible-playbook [-i INVENTORY] [-e JSON] ... PLAYBOOK`` on the host; output streamed.

        :param playbook: path on the host; relative paths resolve in ``cwd`` (default: the
            connection's ``navigator_dir``, if set).
        :param extra_vars: passed as one JSON ``--extra-vars`` item (typed values survive); values of
            secret-looking keys are redacted in logs and errors. Prefer vault files for real secrets.
        """
        playbook = check_path(playbook, "playbook")
        argv: list[str] = [ansible_playbook]
        if inventory:
            argv += ["-i", check_path(inventory, "inventory")]
        if extra_vars:
            argv += ["--extra-vars", json.dumps(dict(extra_vars), separators=(",", ":"), default=str)]
        if limit:
            argv += ["--limit", check_path(limit, "limit")]
        if tags:
            argv += ["--tags", ",".join(check_path(t, "tag") for t in tags)]
        if vault_password_file:
            argv += ["--vault-password-file", check_path(vault_password_file, "vault_password_file")]
        if check:
            argv.append("--check")
        argv.append(playbook)
        directory = cwd or self.settings.navigator_dir
        prefix: list[str] = []
        if directory or env:
            prefix = ["env"]
            if directory:
                prefix.append(f"--chdir={check_path(directory, 'cwd')}")
            prefix += env_assignments({"ANSIBLE_FORCE_COLOR": "false", **dict(env or {})})
        return self.run(prefix + argv, timeout=timeout, stream=True)

    # ------------------------------------------------------------------------------------------ test

    def test_connection(self) -> tuple[bool, str]:
        """Reach the host and run ``kcli version``; a message that says what is wrong otherwise."""
        try:
            version = self.run_kcli("version", timeout=self.settings.cmd_timeout or TEST_CONNECTION_TIMEOUT)
        except KcliNotFoundError as err:
            return False, str(err)
        except QubinodeCommandError as err:
            return False, f"kcli failed on {self.settings.target}: {err}"
        except (QubinodeError, ValueError) as err:
            return False, str(err)
        except Exception as err:  # e.g. the connection itself does not exist
            return False, f"{type(err).__name__}: {err}"
        finally:
            self.close()
        first_line = version.strip().splitlines()[0] if version.strip() else "(no output)"
        sudo = " via sudo" if self.settings.use_sudo else ""
        return True, f"kcli answered on {self.settings.target}{sudo}: {first_line}"


class _LineLogger:
    """Logs a command's output line by line as chunks arrive (stdout at INFO, stderr at WARNING)."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def feed(self, stream: str, chunk: bytes) -> None:
        data = self.partial[stream] + chunk
        *complete, self.partial[stream] = data.split(b"\n")
        for raw in complete:
            self._emit(stream, raw)

    def flush(self) -> None:
        for stream, rest in self.partial.items():
            if rest:
                self._emit(stream, rest)
            self.partial[stream] = b""

    def _emit(self, stream: str, raw: bytes) -> None:
        text = _decode(raw).rstrip("\r")
        if stream == "stderr":
            self.log.warning("[stderr] %s", text)
        else:
            self.log.info("| %s", text)


def _stream_process(full: list[str], timeout: float | None, lines: _LineLogger) -> tuple[int, bytes, bytes]:
    """Run ``full`` without a shell, logging output lines as they come; enforce ``timeout``."""
    import selectors

    process = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    buffers = {"stdout": bytearray(), "stderr": bytearray()}
    deadline = time.monotonic() + timeout if timeout else None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ, "stdout")
        selector.register(process.stderr, selectors.EVENT_READ, "stderr")
        open_streams = 2
        while open_streams:
            wait = 0.5
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    process.kill()
                    process.wait()
                    raise subprocess.TimeoutExpired(
                        full, timeout or 0, bytes(buffers["stdout"]), bytes(buffers["stderr"])
                    )
            for key, _ in selector.select(min(wait, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                buffers[key.data] += chunk
                lines.feed(key.data, chunk)
    process.stdout.close()
    process.stderr.close()
    returncode = process.wait()
    return returncode, bytes(buffers["stdout"]), bytes(buffers["stderr"])


def _program_of(argv: Sequence[str]) -> str:
    """The program an argv runs: ``argv[0]``, or for ``env`` the first item after its options/K=V."""
    if not argv:
        return ""
    if argv[0] != "env":
        return argv[0]
    for item in argv[1:]:
        if item.startswith("-") or ("=" in item and ENV_KEY.match(item.split("=", 1)[0])):
            continue
        return item
    return "env"


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")
