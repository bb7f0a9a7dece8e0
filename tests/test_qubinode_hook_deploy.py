# ruff: noqa: F811  (the fixtures imported from test_qubinode_hook are parameters here)
"""QubinodeHook beyond VMs: plans, clusters, kcli-pipelines scripts, playbooks and readiness checks.

Same bed as ``test_qubinode_hook.py``: the stand-in kcli (and a stand-in ``ansible-playbook``) run as
real programs, locally and through Debian's real sshd; assertions read what they really received.
"""

from __future__ import annotations

import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_llm_provider.hooks.qubinode import (
    KcliNotFoundError,
    QubinodeCommandError,
    QubinodeConfigError,
    QubinodeNotFound,
    QubinodeVMNotFound,
    redact,
)
from tests.log_capture import capture_hook_log
from tests.support.fake_kcli import FakeKcli, ansible_calls, install_ansible_playbook
from tests.test_qubinode_hook import HookFactory, kcli, mode, qubinode  # noqa: F401  (fixtures)

PLAN = textwrap.dedent(
    """\
    parameters:
      prefix: lab
    {{ prefix }}-web:
      image: centos9stream
    {{ prefix }}-db:
      image: centos9stream
    """
)


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "plans" / "lab.yml"
    path.parent.mkdir()
    path.write_text(PLAN)
    return path


# ------------------------------------------------------------------------------------------- plans


def test_plan_round_trip(qubinode: HookFactory, kcli: FakeKcli, plan_file: Path, mode: str) -> None:
    hook = qubinode()
    assert hook.get_plan("lab") is None
    plan = hook.create_plan("lab", file=str(plan_file), params={"prefix": "qa", "memory": 2048})
    assert plan["plan"] == "lab"
    assert sorted(plan["vms"]) == ["qa-db", "qa-web"]
    (create,) = kcli.calls("create")
    assert create["argv"] == [
        "create", "plan", "-f", str(plan_file), "-P", "prefix=qa", "-P", "memory=2048", "lab"
    ]  # fmt: skip
    assert create["via_ssh"] is (mode == "ssh")
    assert hook.get_vm("qa-web")["plan"] == "lab"

    # A rerun (e.g. a retry) completes the plan; kcli skips the VMs that exist.
    again = hook.create_plan("lab", file=str(plan_file), params={"prefix": "qa"})
    assert sorted(again["vms"]) == ["qa-db", "qa-web"]
    assert sorted(kcli.vms()) == ["qa-db", "qa-web"]

    assert hook.delete_plan("lab") is True
    assert kcli.vms() == {}
    assert kcli.calls("delete")[-1]["argv"] == ["delete", "plan", "-y", "lab"]
    assert hook.delete_plan("lab", missing_ok=True) is False
    with pytest.raises(QubinodeNotFound, match="Plan 'lab' not found"):
        hook.delete_plan("lab")
    assert len(kcli.calls("delete")) == 1


def test_plan_file_missing_is_a_clear_error(qubinode: HookFactory, tmp_path: Path) -> None:
    hook = qubinode()
    with pytest.raises(QubinodeCommandError, match="exit code 1") as caught:
        hook.create_plan("lab", file=str(tmp_path / "nope.yml"))
    assert "nope.yml" in caught.value.stderr
    with pytest.raises(QubinodeConfigError, match="exactly one"):
        hook.create_plan("lab")
    with pytest.raises(QubinodeConfigError, match="starts with '-'"):
        hook.create_plan("-y", file="plan.yml")


# ------------------------------------------------------------------------------------------- kube


def test_kube_is_idempotent(qubinode: HookFactory, kcli: FakeKcli, tmp_path: Path) -> None:
    hook = qubinode(kcli_client="remote-kvm")
    paramfile = tmp_path / "k3s-params.yml"
    paramfile.write_text("ctlplanes: 1\nworkers: 2\n")
    first = hook.create_kube("edge", "k3s", paramfile=str(paramfile), params={"version": "v1.30"})
    second = hook.create_kube("edge", "k3s", paramfile=str(paramfile), params={"version": "v1.30"})
    assert first == second
    assert first["type"] == "k3s" and first["version"] == "v1.30"
    assert sorted(first["vms"]) == ["edge-ctlplane-0", "edge-worker-0", "edge-worker-1"]
    (create,) = kcli.calls("create")
    assert create["argv"] == [
        "-C", "remote-kvm", "create", "kube", "k3s", "--paramfile", str(paramfile),
        "-P", "version=v1.30", "edge",
    ]  # fmt: skip
    assert sorted(kcli.vms("remote-kvm")) == first["vms"]

    assert hook.delete_kube("edge") is True
    assert kcli.vms("remote-kvm") == {}
    assert hook.delete_kube("edge", missing_ok=True) is False
    with pytest.raises(QubinodeNotFound, match="Cluster 'edge' not found"):
        hook.delete_kube("edge")
    with pytest.raises(QubinodeConfigError, match="kube kind"):
        hook.create_kube("edge", "k3s; reboot")


def test_kube_failure_carries_stderr(qubinode: HookFactory) -> None:
    hook = qubinode()
    with pytest.raises(QubinodeCommandError) as caught:
        hook.create_kube("edge", "unknownkind")
    assert caught.value.returncode == 2
    assert "invalid choice: 'unknownkind'" in caught.value.stderr


# ---------------------------------------------------------------------------- kcli-pipelines scripts


@pytest.fixture
def pipelines(tmp_path: Path) -> Path:
    root = tmp_path / "qubinode-pipelines"
    script = root / "freeipa" / "deploy.sh"
    script.parent.mkdir(parents=True)
    script.write_text(
        textwrap.dedent(
            """\
            # a kcli-pipelines component script: driven by ACTION and friends
            echo "step 1: ACTION=$ACTION VM_NAME=$VM_NAME CICD_PIPELINE=$CICD_PIPELINE"
            echo "cwd=$(pwd)"
            echo "a warning" >&2
            if [ "$ACTION" = "delete" ] && [ -n "$FAIL_DELETE" ]; then
              echo "cannot delete $VM_NAME" >&2
              exit 3
            fi
            echo "done: $COMMUNITY_VERSION"
            """
        )
    )
    return root


def test_pipeline_script(
    qubinode: HookFactory, pipelines: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    hook = qubinode(pipelines_dir=str(pipelines))
    marker = tmp_path / "pwned"
    env = {"VM_NAME": f"ipa; touch {marker}", "COMMUNITY_VERSION": "true", "ADMIN_PASSWORD": "s3cr3t"}
    with capture_hook_log(hook, capfd) as hook_log:
        result = hook.run_pipeline_script("freeipa", "create", env)
    assert result.returncode == 0
    assert f"step 1: ACTION=create VM_NAME=ipa; touch {marker} CICD_PIPELINE=true" in result.stdout
    assert f"cwd={pipelines / 'freeipa'}" in result.stdout
    assert "done: true" in result.stdout
    assert not marker.exists()
    logged = hook_log.text
    assert "step 1: ACTION=create" in logged  # streamed into the log, line by line
    assert "a warning" in logged
    assert "ADMIN_PASSWORD=***" in logged and "s3cr3t" not in logged

    with pytest.raises(QubinodeCommandError, match="exit code 3") as caught:
        hook.run_pipeline_script("freeipa", "delete", {"VM_NAME": "ipa", "FAIL_DELETE": "1"})
    assert "cannot delete ipa" in caught.value.stderr
    assert not isinstance(caught.value, KcliNotFoundError)


def test_pipeline_script_arguments_are_checked(qubinode: HookFactory, pipelines: Path) -> None:
    hook = qubinode(pipelines_dir=str(pipelines))
    with pytest.raises(QubinodeConfigError, match="does not exist"):
        hook.run_pipeline_script("harbor", "create")
    for bad in ("../etc", "freeipa/../../x", "-x", "a b", ""):
        with pytest.raises(QubinodeConfigError, match="Invalid component"):
            hook.run_pipeline_script(bad, "create")
    with pytest.raises(QubinodeConfigError, match="action must be"):
        hook.run_pipeline_script("freeipa", "rm -rf")
    with pytest.raises(QubinodeConfigError, match="environment variable name"):
        hook.run_pipeline_script("freeipa", "create", {"BAD NAME": "x"})
    with pytest.raises(QubinodeConfigError, match="pipelines_dir"):
        qubinode().run_pipeline_script("freeipa", "create")


# ------------------------------------------------------------------------------------------ playbooks


@pytest.fixture
def ansible(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "ansible.jsonl"
    return install_ansible_playbook(tmp_path / "ansible-bin", log), log


def test_run_playbook(
    qubinode: HookFactory, ansible: tuple[Path, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    program, log = ansible
    navigator = tmp_path / "navigator"
    (navigator / "playbooks").mkdir(parents=True)
    (navigator / "playbooks" / "site.yml").write_text("gather facts\nconfigure web\n")
    (navigator / "playbooks" / "broken.yml").write_text("gather facts\nfail\n")
    hook = qubinode(navigator_dir=str(navigator))
    extra = {"vm_name": "web-1; reboot", "port": 8080, "admin_password": "s3cr3t"}
    with capture_hook_log(hook, capfd) as hook_log:
        result = hook.run_playbook(
            "playbooks/site.yml",
            inventory="inventories/lab",
            extra_vars=extra,
            limit="web",
            ansible_playbook=str(program),
        )
    assert "ok=2 changed=0 unreachable=0 failed=0" in result.stdout
    (call,) = ansible_calls(log)
    assert call["cwd"] == str(navigator)
    assert call["extra_vars"] == extra  # typed values reached ansible as one JSON item
    assert call["argv"][:2] == ["-i", "inventories/lab"]
    assert call["argv"][-1] == "playbooks/site.yml"
    logged = hook_log.text
    assert "TASK [configure web]" in logged  # streamed
    assert "s3cr3t" not in logged and '"admin_password":"***"' in logged

    with pytest.raises(QubinodeCommandError, match="exit code 2") as caught:
        hook.run_playbook("playbooks/broken.yml", ansible_playbook=str(program))
    assert "fatal: [localhost]" in str(caught.value)

    with pytest.raises(KcliNotFoundError, match="ansible-playbook-missing not found"):
        hook.run_playbook("playbooks/site.yml", ansible_playbook="ansible-playbook-missing")


def test_redact_covers_env_params_and_extra_vars() -> None:
    argv = [
        "env",
        "TOKEN=abc",
        "USER=me",
        "kcli",
        "-P",
        "pull_secret=xyz",
        "-e",
        '{"vault_pass": "p", "a": 1}',
    ]
    assert redact(argv) == [
        "env", "TOKEN=***", "USER=me", "kcli", "-P", "pull_secret=***", "-e", '{"vault_pass":"***","a":1}'
    ]  # fmt: skip


# ------------------------------------------------------------------------------------- readiness


@pytest.fixture
def listener() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_check_vm(qubinode: HookFactory, kcli: FakeKcli, tmp_path: Path, listener: int) -> None:
    hook = qubinode()
    ready, why, info = hook.check_vm("web-1")
    assert (ready, info) == (False, None) and "does not exist" in why
    with pytest.raises(QubinodeVMNotFound):
        hook.check_vm("web-1", missing_ok=False)

    booted = tmp_path / "booted"
    kcli.configure(ready_file=str(booted), boot_status="down", ip="127.0.0.1")
    hook.create_vm("web-1", image="img")
    ready, why, _ = hook.check_vm("web-1", target_status="running")
    assert not ready and "waiting for 'up'" in why
    kcli.configure(boot_status="up")
    ready, why, _ = hook.check_vm("web-1", require_ip=True)
    assert not ready and "no IP yet" in why
    assert hook.check_vm("web-1")[0] is True  # status only

    booted.touch()
    assert hook.get_vm_ip("web-1") == "127.0.0.1"
    ready, why, info = hook.check_vm("web-1", target_status="running", require_ip=True, ssh_port=listener)
    assert ready, why
    assert info["ip"] == "127.0.0.1"

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    ready, why, _ = hook.check_vm("web-1", ssh_port=closed_port)
    assert not ready and f"port {closed_port} does not answer" in why
