"""QubinodeHook against a stand-in kcli, run locally and over Debian's real sshd.

Nothing of ours is mocked: the hook runs the fake kcli (tests/support/fake_kcli.py) as a program,
either with subprocess or through a real SSH session to ``sshd``, and the tests read what kcli really
received from its invocation log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from airflow_llm_provider.hooks.qubinode import (
    CONN_FIELDS,
    KcliNotFoundError,
    QubinodeAuthenticationError,
    QubinodeCommandError,
    QubinodeConfigError,
    QubinodeConnectionError,
    QubinodeHook,
    QubinodeHostKeyError,
    QubinodeVMNotFound,
)
from tests.fixtures._proc import free_port
from tests.fixtures.sshd import SshServer
from tests.log_capture import capture_hook_log
from tests.support.fake_kcli import FakeKcli, install

CONN_ID = "qubinode_test"
HookFactory = Callable[..., QubinodeHook]


@pytest.fixture
def kcli(tmp_path: Path) -> FakeKcli:
    return install(tmp_path / "bin", tmp_path / "kcli-state.json")


@pytest.fixture(params=["local", "ssh"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def qubinode(
    request: pytest.FixtureRequest, mode: str, kcli: FakeKcli, airflow_conn
) -> Iterator[HookFactory]:
    """Define ``AIRFLOW_CONN_QUBINODE_TEST`` for ``mode`` (plus ``extra``) and return a hook on it."""
    hooks: list[QubinodeHook] = []

    def make(*, cmd_timeout: float | None = None, **extra) -> QubinodeHook:
        extra.setdefault("kcli_path", str(kcli.path))
        if mode == "local":
            conn = {"conn_type": "qubinode", "extra": {"mode": "local", **extra}}
        else:
            server: SshServer = request.getfixturevalue("sshd")
            conn = server.qubinode_connection(**extra)
        airflow_conn(CONN_ID, conn)
        hook = QubinodeHook(qubinode_conn_id=CONN_ID, cmd_timeout=cmd_timeout)
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        hook.close()


def _ssh_hook(airflow_conn, conn: dict, conn_id: str = CONN_ID) -> QubinodeHook:
    airflow_conn(conn_id, conn)
    return QubinodeHook(qubinode_conn_id=conn_id)


def _other_key(tmp_path: Path, name: str) -> tuple[Path, str]:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    kind, data, *_ = path.with_name(name + ".pub").read_text().split()
    return path, f"{kind} {data}"


# ------------------------------------------------------------------------------------- module import


def test_importing_the_hook_module_is_cheap() -> None:
    code = (
        "import sys, airflow_llm_provider.hooks.qubinode as q\n"
        "heavy = [m for m in ('paramiko', 'wtforms', 'flask_appbuilder', 'airflow.providers.ssh.hooks.ssh') "
        "if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ----------------------------------------------------------------------------------- VM life cycle


def test_vm_round_trip(qubinode: HookFactory, kcli: FakeKcli, mode: str) -> None:
    hook = qubinode()
    assert hook.list_vms() == []
    assert hook.get_vm("web-1") is None

    created = hook.create_vm("web-1", image="centos9stream", params={"memory": 2048, "numcpus": 2})
    assert created["name"] == "web-1"
    assert created["status"] == "up"
    assert created["image"] == "centos9stream"
    assert created["memory"] == 2048
    assert hook.get_vm("web-1")["ip"] == created["ip"]
    assert [vm["name"] for vm in hook.list_vms()] == ["web-1"]

    assert hook.stop_vm("web-1")["status"] == "down"
    assert hook.start_vm("web-1")["status"] == "up"
    assert hook.restart_vm("web-1")["status"] == "up"

    assert hook.delete_vm("web-1") is True
    assert hook.get_vm("web-1") is None
    assert hook.list_vms() == []
    assert kcli.vms() == {}

    calls = kcli.calls()
    assert calls, "kcli was never run"
    assert {c["via_ssh"] for c in calls} == {mode == "ssh"}
    (delete,) = kcli.calls("delete")
    assert delete["argv"] == ["delete", "vm", "-y", "web-1"]  # always -y and the explicit name


def test_create_is_idempotent(qubinode: HookFactory, kcli: FakeKcli) -> None:
    hook = qubinode()
    first = hook.create_vm("db-1", profile="rhel9")
    second = hook.create_vm("db-1", profile="rhel9")
    assert second == first
    assert len(kcli.calls("create")) == 1
    assert list(kcli.vms()) == ["db-1"]


def test_delete_missing_vm(qubinode: HookFactory, kcli: FakeKcli) -> None:
    hook = qubinode()
    assert hook.delete_vm("ghost", missing_ok=True) is False
    with pytest.raises(QubinodeVMNotFound, match="VM 'ghost' not found"):
        hook.delete_vm("ghost")
    assert kcli.calls("delete") == []  # nothing was deleted, least of all kcli's "last VM"


def test_actions_on_a_missing_vm_say_so(qubinode: HookFactory) -> None:
    hook = qubinode()
    for action in (hook.start_vm, hook.stop_vm, hook.restart_vm):
        with pytest.raises(QubinodeVMNotFound, match="ghost"):
            action("ghost")


@pytest.mark.parametrize("bad", ["", "   ", "-y", "--force", "two\nlines", "nul\0", None])
def test_names_kcli_would_misread_are_refused(qubinode: HookFactory, kcli: FakeKcli, bad) -> None:
    hook = qubinode()
    with pytest.raises(QubinodeConfigError):
        hook.create_vm(bad, image="centos9stream")
    assert kcli.calls() == []


def test_shell_metacharacters_reach_kcli_literally(
    qubinode: HookFactory, kcli: FakeKcli, tmp_path: Path
) -> None:
    markers = [tmp_path / f"pwned-{i}" for i in range(4)]
    names = [
        f"x; touch {markers[0]}",
        f"$(touch {markers[1]})",
        f"`touch {markers[2]}`",
        f'it\'s "quoted" && touch {markers[3]} | cat > /dev/null',
    ]
    hook = qubinode()
    for name in names:
        assert hook.create_vm(name, image="img", params={"cmds": [f"echo '{name}'"]})["name"] == name
    assert [m for m in markers if m.exists()] == []
    created = [call["argv"][-1] for call in kcli.calls("create")]
    assert created == names
    assert sorted(kcli.vms()) == sorted(names)
    for name in names:
        assert hook.delete_vm(name) is True
    assert [call["argv"][-1] for call in kcli.calls("delete")] == names
    assert [m for m in markers if m.exists()] == []


def test_client_and_params_are_separate_argv_items(qubinode: HookFactory, kcli: FakeKcli) -> None:
    hook = qubinode(kcli_client="aws")
    params = {"memory": 4096, "numcpus": 2, "disks": [10, 20], "start": False, "cmds": ["echo hi; id"]}
    vm = hook.create_vm("web-2", image="centos9stream", params=params)
    (create,) = kcli.calls("create")
    assert create["argv"] == [
        "-C", "aws", "create", "vm", "-i", "centos9stream",
        "-P", "memory=4096", "-P", "numcpus=2", "-P", "disks=[10,20]", "-P", "start=false",
        "-P", 'cmds=["echo hi; id"]',
        "web-2",
    ]  # fmt: skip
    assert {c["client"] for c in kcli.calls()} == {"aws"}
    assert vm["status"] == "down" and "ip" not in vm  # start=false reached kcli as a boolean
    assert "web-2" in kcli.vms("aws")
    assert kcli.vms("local") == {}


def test_run_kcli_returns_text_or_json(qubinode: HookFactory, kcli: FakeKcli) -> None:
    hook = qubinode()
    assert hook.run_kcli("version").startswith("version: 99.0.")
    hook.create_vm("a", image="img")
    assert [vm["name"] for vm in hook.run_kcli("list", "vm", json_output=True)] == ["a"]
    assert kcli.calls("list")[-1]["argv"] == ["-o", "json", "list", "vm"]


def test_json_after_warning_lines_is_parsed(qubinode: HookFactory, kcli: FakeKcli) -> None:
    hook = qubinode()
    hook.create_vm("a", image="img")
    kcli.configure(noise=True)
    assert [vm["name"] for vm in hook.list_vms()] == ["a"]
    assert hook.get_vm("a")["name"] == "a"


def test_kcli_failure_is_a_clear_error_without_secrets(
    qubinode: HookFactory, kcli: FakeKcli, capfd: pytest.CaptureFixture[str]
) -> None:
    hook = qubinode()
    kcli.configure(fail={"create": "libvirt: cannot reach qemu:///system"})
    with capture_hook_log(hook, capfd) as hook_log, pytest.raises(QubinodeCommandError) as caught:
        hook.create_vm("rhel-1", image="rhel9", params={"rhnpassword": "s3cr3t-value", "memory": 1024})
    err = caught.value
    assert err.returncode == 1
    assert "cannot reach qemu:///system" in err.stderr
    assert "exit code 1" in str(err)
    assert "rhnpassword=***" in err.command and "memory=1024" in err.command
    assert "s3cr3t" not in str(err) and "s3cr3t" not in err.command
    logged = hook_log.text
    assert "rhnpassword=***" in logged  # the hook logs each command it runs...
    assert "s3cr3t" not in logged  # ...redacted
    # kcli itself did receive the real value.
    assert "rhnpassword=s3cr3t-value" in kcli.calls("create")[0]["argv"]


def test_command_timeout(qubinode: HookFactory, kcli: FakeKcli) -> None:
    hook = qubinode(cmd_timeout=1)
    kcli.configure(sleep=4)
    started = time.monotonic()
    with pytest.raises(QubinodeCommandError, match="timed out after 1s") as caught:
        hook.list_vms()
    assert caught.value.returncode is None
    assert time.monotonic() - started < 3.5


# ------------------------------------------------------------------------------------ kcli missing


@pytest.mark.parametrize("where", ["absolute", "on_path"])
def test_kcli_missing(qubinode: HookFactory, tmp_path: Path, where: str) -> None:
    path = str(tmp_path / "nowhere" / "kcli") if where == "absolute" else "kcli-not-installed-here"
    hook = qubinode(kcli_path=path)
    with pytest.raises(KcliNotFoundError, match="kcli not found") as caught:
        hook.list_vms()
    assert path in str(caught.value)
    assert "kcli_path" in str(caught.value)
    ok, message = hook.test_connection()
    assert ok is False
    assert "kcli not found" in message


# ----------------------------------------------------------------------------------------- sudo


def test_sudo_auto_for_root_and_for_other_users(airflow_conn, sshd: SshServer, kcli: FakeKcli) -> None:
    base = sshd.qubinode_connection(kcli_path="kcli")
    as_root = _ssh_hook(airflow_conn, {**base, "login": "root"}, "q_root")
    assert as_root.use_sudo is False
    assert as_root.command_line(["kcli", "info", "vm", "a b"]) == "kcli info vm 'a b'"
    as_user = _ssh_hook(airflow_conn, {**base, "login": "lab-user"}, "q_user")
    assert as_user.use_sudo is True
    assert as_user.command_line(["kcli", "info", "vm", "a b"]) == "sudo -n kcli info vm 'a b'"
    forced_off = _ssh_hook(
        airflow_conn, {**base, "login": "lab-user", "extra": {"use_sudo": "false"}}, "q_off"
    )
    assert forced_off.use_sudo is False
    assert kcli.calls() == []


def test_sudo_in_local_mode(airflow_conn, kcli: FakeKcli, tmp_path: Path, monkeypatch) -> None:
    stand_in = tmp_path / "sudo-bin" / "sudo"
    stand_in.parent.mkdir()
    stand_in.write_text(
        '#!/bin/sh\n[ "$1" = "-n" ] || { echo "sudo stand-in: expected -n" >&2; exit 1; }\n'
        'shift\nSUDO_USER=$(id -un) exec "$@"\n'
    )
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}")
    conn = {"conn_type": "qubinode", "extra": {"mode": "local", "kcli_path": str(kcli.path)}}
    hook = _ssh_hook(airflow_conn, {**conn, "extra": {**conn["extra"], "use_sudo": "true"}}, "q_sudo")
    assert hook.list_vms() == []
    assert kcli.calls()[-1]["sudo_user"]  # ran behind sudo
    hook = _ssh_hook(airflow_conn, {**conn, "extra": {**conn["extra"], "use_sudo": "false"}}, "q_nosudo")
    assert hook.list_vms() == []
    assert kcli.calls()[-1]["sudo_user"] is None

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    hook = _ssh_hook(airflow_conn, {**conn, "extra": {**conn["extra"], "use_sudo": "true"}}, "q_nosudo_bin")
    with pytest.raises(KcliNotFoundError, match="sudo not found"):
        hook.list_vms()


def test_sudo_over_ssh(airflow_conn, sshd: SshServer, kcli: FakeKcli) -> None:
    hook = _ssh_hook(airflow_conn, sshd.qubinode_connection(kcli_path=str(kcli.path), use_sudo="true"))
    if shutil.which("sudo") is None:  # this machine's sshd is the hypervisor: no sudo here
        with pytest.raises(KcliNotFoundError, match="sudo not found"):
            hook.list_vms()
        assert kcli.calls() == []
    else:
        assert hook.list_vms() == []
        assert kcli.calls()[-1]["sudo_user"]
    hook.close()


# ------------------------------------------------------------------------------- SSH: host keys


def test_unknown_host_key_is_refused(airflow_conn, sshd: SshServer, kcli: FakeKcli, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    hook = _ssh_hook(airflow_conn, sshd.qubinode_connection(kcli_path=str(kcli.path), known_hosts=str(empty)))
    with pytest.raises(QubinodeHostKeyError, match="Unknown SSH host key") as caught:
        hook.list_vms()
    assert sshd.known_hosts_name in str(caught.value)
    assert "accept_new" in str(caught.value)
    ok, message = hook.test_connection()
    assert ok is False and "host key" in message
    assert kcli.calls() == []

    missing = tmp_path / "no-such-dir" / "known_hosts"
    hook = _ssh_hook(
        airflow_conn, sshd.qubinode_connection(kcli_path=str(kcli.path), known_hosts=str(missing))
    )
    with pytest.raises(QubinodeHostKeyError, match="does not exist"):
        hook.list_vms()
    assert not missing.exists()


def test_accept_new_records_the_key_then_verifies_it(
    airflow_conn,
    sshd: SshServer,
    kcli: FakeKcli,
    tmp_path: Path,
) -> None:
    known_hosts = tmp_path / "kh" / "known_hosts"
    conn = sshd.qubinode_connection(kcli_path=str(kcli.path), known_hosts=str(known_hosts))
    hook = _ssh_hook(airflow_conn, {**conn, "extra": {**conn["extra"], "host_key_policy": "accept_new"}})
    assert hook.list_vms() == []
    hook.close()
    assert known_hosts.read_text() == sshd.known_hosts_line()
    # The recorded key now verifies under the default policy.
    hook = _ssh_hook(airflow_conn, conn)
    assert hook.list_vms() == []
    hook.close()
    assert known_hosts.read_text() == sshd.known_hosts_line()  # recorded once


def test_changed_host_key_is_refused_even_with_accept_new(
    airflow_conn,
    sshd: SshServer,
    kcli: FakeKcli,
    tmp_path: Path,
) -> None:
    _, impostor = _other_key(tmp_path, "impostor")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_line(impostor))
    for policy in ("verify", "accept_new"):
        conn = sshd.qubinode_connection(
            kcli_path=str(kcli.path), known_hosts=str(known_hosts), host_key_policy=policy
        )
        hook = _ssh_hook(airflow_conn, conn)
        with pytest.raises(QubinodeHostKeyError, match="host key mismatch") as caught:
            hook.list_vms()
        assert "SHA256:" in str(caught.value)
        ok, message = hook.test_connection()
        assert ok is False and "host key" in message
    assert known_hosts.read_text() == sshd.known_hosts_line(impostor)
    assert kcli.calls() == []


def test_host_key_verification_cannot_be_switched_off(airflow_conn, sshd: SshServer) -> None:
    hook = _ssh_hook(airflow_conn, sshd.qubinode_connection(host_key_policy="none"))
    with pytest.raises(QubinodeConfigError, match="host_key_policy"):
        hook.list_vms()


# --------------------------------------------------------------------------------- SSH: reachability


def test_wrong_private_key_is_an_auth_error(
    airflow_conn, sshd: SshServer, kcli: FakeKcli, tmp_path: Path
) -> None:
    wrong_key, _ = _other_key(tmp_path, "stranger")
    hook = _ssh_hook(
        airflow_conn, sshd.qubinode_connection(kcli_path=str(kcli.path), key_file=str(wrong_key))
    )
    with pytest.raises(QubinodeAuthenticationError, match="SSH authentication refused") as caught:
        hook.list_vms()
    assert f"{sshd.user}@{sshd.host}:{sshd.port}" in str(caught.value)
    ok, message = hook.test_connection()
    assert ok is False and "authentication refused" in message
    assert kcli.calls() == []


def test_private_key_in_the_extra(airflow_conn, sshd: SshServer, kcli: FakeKcli) -> None:
    conn = sshd.qubinode_connection(kcli_path=str(kcli.path))
    del conn["extra"]["key_file"]
    conn["extra"]["private_key"] = sshd.private_key.read_text()
    hook = _ssh_hook(airflow_conn, conn)
    assert hook.list_vms() == []
    hook.close()
    assert kcli.calls()[-1]["via_ssh"] is True


def test_closed_port_cannot_connect(airflow_conn, sshd: SshServer, kcli: FakeKcli) -> None:
    conn = sshd.qubinode_connection(kcli_path=str(kcli.path))
    hook = _ssh_hook(airflow_conn, {**conn, "port": free_port()})
    with pytest.raises(QubinodeConnectionError, match=r"Cannot connect to .* connection refused"):
        hook.list_vms()
    ok, message = hook.test_connection()
    assert ok is False and message.startswith("Cannot connect")


def test_test_connection(qubinode: HookFactory, kcli: FakeKcli, mode: str) -> None:
    ok, message = qubinode().test_connection()
    assert ok is True, message
    assert "version: 99.0." in message
    assert kcli.calls()[-1]["argv"] == ["version"]

    kcli.configure(fail={"version": "Couldn't connect to qemu:///system"})
    ok, message = qubinode().test_connection()
    assert ok is False
    assert "kcli failed" in message and "exit code 1" in message and "qemu:///system" in message


def test_test_connection_reports_bad_settings(airflow_conn) -> None:
    airflow_conn(CONN_ID, {"conn_type": "qubinode", "extra": {"mode": "telepathy"}})
    ok, message = QubinodeHook(qubinode_conn_id=CONN_ID).test_connection()
    assert ok is False and "mode must be one of" in message
    airflow_conn(CONN_ID, {"conn_type": "qubinode", "extra": {}})
    ok, message = QubinodeHook(qubinode_conn_id=CONN_ID).test_connection()
    assert ok is False and "has no host" in message


# ----------------------------------------------------------------------- other connection shapes


def test_reusing_an_ssh_connection(airflow_conn, sshd: SshServer, kcli: FakeKcli, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")  # the host key comes from the ssh connection's host_key extra only
    airflow_conn("hypervisor_ssh", sshd.ssh_connection())
    conn = {
        "conn_type": "qubinode",
        "extra": {"ssh_conn_id": "hypervisor_ssh", "kcli_path": str(kcli.path), "known_hosts": str(empty)},
    }
    hook = _ssh_hook(airflow_conn, conn)
    assert hook.create_vm("via-ssh-conn", image="img")["name"] == "via-ssh-conn"
    hook.close()
    assert {c["via_ssh"] for c in kcli.calls()} == {True}

    _, impostor = _other_key(tmp_path, "impostor")
    airflow_conn("hypervisor_ssh", sshd.ssh_connection(host_key=impostor))
    hook = _ssh_hook(airflow_conn, conn)
    with pytest.raises(QubinodeHostKeyError, match="mismatch"):
        hook.list_vms()


def test_connection_as_uri(sshd: SshServer, kcli: FakeKcli, monkeypatch) -> None:
    query = "&".join(
        f"{k}={quote(v, safe='')}"
        for k, v in {
            "key_file": str(sshd.private_key),
            "known_hosts": str(sshd.known_hosts),
            "kcli_path": str(kcli.path),
            "kcli_client": "remote-kvm",
            "use_sudo": "auto",
        }.items()
    )
    monkeypatch.setenv("AIRFLOW_CONN_QUBINODE_URI", f"qubinode://{sshd.user}@{sshd.host}:{sshd.port}?{query}")
    with QubinodeHook(qubinode_conn_id="qubinode_uri") as hook:
        assert hook.list_vms() == []
    (call,) = kcli.calls()
    assert call["argv"] == ["-C", "remote-kvm", "-o", "json", "list", "vm"]
    assert call["via_ssh"] is True


# ------------------------------------------------------------------------------- connection form


def test_form_widgets_match_the_declared_fields() -> None:
    pytest.importorskip("wtforms")
    pytest.importorskip("flask_appbuilder")
    widgets = QubinodeHook.get_connection_form_widgets()
    assert set(widgets) == set(CONN_FIELDS)
    kinds = {name: field.field_class.__name__ for name, field in widgets.items()}
    assert set(kinds.values()) <= {"StringField", "IntegerField", "PasswordField", "BooleanField"}
    assert kinds["private_key_passphrase"] == "PasswordField"
    assert kinds["conn_timeout"] == kinds["cmd_timeout"] == "IntegerField"
    assert kinds["mode"] == "StringField"


def test_ui_field_behaviour_is_valid_for_airflow() -> None:
    import importlib.resources

    import jsonschema

    schema = json.loads(
        importlib.resources.files("airflow")
        .joinpath("customized_form_field_behaviours.schema.json")
        .read_text()
    )
    behaviour = QubinodeHook.get_ui_field_behaviour()
    jsonschema.validate(behaviour, schema)
    from airflow_llm_provider.get_provider_info import QUBINODE_CONNECTION_TYPE

    declared = QUBINODE_CONNECTION_TYPE["ui-field-behaviour"]
    assert behaviour == {
        "hidden_fields": declared["hidden-fields"],
        "relabeling": declared["relabeling"],
        "placeholders": declared["placeholders"],
    }


def test_provider_info_declares_the_connection_type_of_the_hook() -> None:
    from airflow_llm_provider.get_provider_info import get_provider_info

    info = get_provider_info()
    (entry,) = [c for c in info["connection-types"] if c["connection-type"] == QubinodeHook.conn_type]
    assert entry["hook-class-name"] == f"{QubinodeHook.__module__}.{QubinodeHook.__name__}"
    assert entry["hook-name"] == QubinodeHook.hook_name
    assert set(entry["conn-fields"]) == set(CONN_FIELDS)
    hook_modules = [m for h in info.get("hooks", []) for m in h["python-modules"]]
    assert "airflow_llm_provider.hooks.qubinode" in hook_modules
