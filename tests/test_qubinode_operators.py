"""The Qubinode operators and sensor in real DAG runs (``dag.test()``), kcli being the stand-in
program reached over Debian's real sshd (or run locally), on both Airflow lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pendulum
import pytest

from tests.fixtures.sshd import SshServer
from tests.support.fake_kcli import FakeKcli, ansible_calls, install, install_ansible_playbook

CONN_ID = "qubinode_ops"
START = pendulum.datetime(2026, 1, 1, tz="UTC")


@pytest.fixture
def kcli(tmp_path: Path) -> FakeKcli:
    return install(tmp_path / "bin", tmp_path / "kcli-state.json")


def _dag(dag_id: str) -> Any:
    from airflow.providers.common.compat.sdk import DAG

    return DAG(dag_id, schedule=None, start_date=START, catchup=False, tags=["test"])


def _all_xcoms(result: Any) -> str:
    from airflow_llm_provider.version_compat import AIRFLOW_V_3_0_PLUS

    if AIRFLOW_V_3_0_PLUS:
        from airflow.models.xcom import XComModel as XCom
    else:
        from airflow.models.xcom import XCom
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XCom).filter_by(dag_id=result.dag_id, run_id=result.run_id).all()
        return "\n".join(str(row.value) for row in rows)


def _rendered(result: Any, task_id: str) -> str:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(RTIF).filter_by(dag_id=result.dag_id, run_id=result.run_id, task_id=task_id).one()
        return json.dumps(row.rendered_fields, default=str)


def test_importing_the_modules_is_cheap() -> None:
    modules = [
        "airflow_llm_provider.operators.qubinode",
        "airflow_llm_provider.sensors.qubinode",
        "airflow_llm_provider.triggers.qubinode",
        "airflow_llm_provider.deployments",
        "airflow_llm_provider.deployments.factory",
    ]
    code = (
        f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
        "heavy = ('paramiko', 'asyncssh', 'airflow_llm_provider.hooks.qubinode')\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_vm_life_cycle_dag_over_ssh(
    dag_runner, airflow_conn, sshd: SshServer, kcli: FakeKcli, tmp_path: Path
) -> None:
    from airflow_llm_provider.operators.qubinode import (
        QubinodeAnsiblePlaybookOperator,
        QubinodeCreateVMOperator,
        QubinodeDeleteVMOperator,
        QubinodeVMActionOperator,
    )
    from airflow_llm_provider.sensors.qubinode import QubinodeVMSensor

    program = install_ansible_playbook(tmp_path / "ansible-bin", tmp_path / "ansible.jsonl")
    (tmp_path / "site.yml").write_text("configure {{ vm }}\n")
    airflow_conn(CONN_ID, sshd.qubinode_connection(kcli_path=str(kcli.path), navigator_dir=str(tmp_path)))
    with _dag("qubinode_vm_life_cycle") as dag:
        create = QubinodeCreateVMOperator(
            task_id="create",
            qubinode_conn_id=CONN_ID,
            vm_name="web-{{ ds_nodash }}",
            image="centos9stream",
            kcli_params={"memory": 2048, "rhnpassword": "s3cr3t-value", "numcpus": "{{ 1 + 1 }}"},
        )
        wait = QubinodeVMSensor(
            task_id="wait", qubinode_conn_id=CONN_ID, vm_name="web-{{ ds_nodash }}", require_ip=True
        )
        playbook = QubinodeAnsiblePlaybookOperator(
            task_id="playbook",
            qubinode_conn_id=CONN_ID,
            playbook="site.yml",
            ansible_playbook=str(program),
            extra_vars={"vm_ip": "{{ ti.xcom_pull('wait')['ip'] }}"},
        )
        stop = QubinodeVMActionOperator(
            task_id="stop", qubinode_conn_id=CONN_ID, vm_name="web-{{ ds_nodash }}", action="stop"
        )
        delete = QubinodeDeleteVMOperator(
            task_id="delete", qubinode_conn_id=CONN_ID, vm_name="web-{{ ds_nodash }}", trigger_rule="all_done"
        )
        create >> wait >> playbook >> stop >> delete

    result = dag_runner(dag, logical_date=START)

    assert result.state == "success", result.task_states
    created = result.xcom("create")
    assert created["name"] == "web-20260101" and created["created"] is True
    assert created["status"] == "up" and created["ip"].startswith("192.168.122.")
    assert result.xcom("wait")["ip"] == created["ip"]
    assert result.xcom("playbook")["recap"] == {
        "localhost": {"ok": 1, "changed": 0, "unreachable": 0, "failed": 0}
    }
    (play,) = ansible_calls(tmp_path / "ansible.jsonl")
    assert play["extra_vars"] == {"vm_ip": created["ip"]}
    assert play["via_ssh"] is True and play["cwd"] == str(tmp_path)
    assert result.xcom("stop")["status"] == "down"
    assert result.xcom("delete") == {"name": "web-20260101", "deleted": True}
    assert kcli.vms() == {}
    (create_call,) = kcli.calls("create")
    assert "numcpus=2" in create_call["argv"] and "rhnpassword=s3cr3t-value" in create_call["argv"]
    assert "s3cr3t" not in _all_xcoms(result)
    assert "s3cr3t" not in _rendered(result, "create")


def test_create_is_idempotent_and_cleanup_runs_after_a_failure(
    dag_runner, airflow_conn, kcli: FakeKcli
) -> None:
    from airflow_llm_provider.operators.qubinode import QubinodeCreateVMOperator, QubinodeDeleteVMOperator

    airflow_conn(CONN_ID, {"conn_type": "qubinode", "extra": {"mode": "local", "kcli_path": str(kcli.path)}})
    with _dag("qubinode_idempotent") as dag:
        first = QubinodeCreateVMOperator(
            task_id="first", qubinode_conn_id=CONN_ID, vm_name="db-1", image="img"
        )
        again = QubinodeCreateVMOperator(
            task_id="again", qubinode_conn_id=CONN_ID, vm_name="db-1", image="img"
        )
        first >> again
    result = dag_runner(dag, logical_date=START)
    assert result.state == "success", result.task_states
    assert result.xcom("first")["created"] is True
    assert result.xcom("again")["created"] is False
    assert len(kcli.calls("create")) == 1

    kcli.configure(fail={"create": "libvirt: no space left on pool default"})
    with _dag("qubinode_cleanup") as dag:
        create = QubinodeCreateVMOperator(
            task_id="create", qubinode_conn_id=CONN_ID, vm_name="db-2", image="img"
        )
        cleanup = QubinodeDeleteVMOperator(
            task_id="cleanup", qubinode_conn_id=CONN_ID, vm_name="db-2", trigger_rule="all_done"
        )
        create >> cleanup
    result = dag_runner(dag, logical_date=START)
    assert result.task_states == {"create": "failed", "cleanup": "success"}
    assert result.xcom("cleanup") == {"name": "db-2", "deleted": False}
    assert kcli.calls("delete") == []


def test_plan_kube_and_component_operators(dag_runner, airflow_conn, kcli: FakeKcli, tmp_path: Path) -> None:
    from airflow_llm_provider.operators.qubinode import (
        QubinodeDeployComponentOperator,
        QubinodeKubeOperator,
        QubinodePlanOperator,
    )

    plan_file = tmp_path / "lab.yml"
    plan_file.write_text("{{ prefix }}-a:\n  image: x\n{{ prefix }}-b:\n  image: x\n")
    script = tmp_path / "pipelines" / "vyos-router" / "deploy.sh"
    script.parent.mkdir(parents=True)
    script.write_text('echo "router $ACTION for $VM_NAME"\necho "token was $API_TOKEN" >&2\n')
    airflow_conn(
        CONN_ID,
        {
            "conn_type": "qubinode",
            "extra": {
                "mode": "local",
                "kcli_path": str(kcli.path),
                "pipelines_dir": str(tmp_path / "pipelines"),
            },
        },
    )
    with _dag("qubinode_plan_kube_component") as dag:
        plan = QubinodePlanOperator(
            task_id="plan",
            qubinode_conn_id=CONN_ID,
            plan="lab",
            plan_file=str(plan_file),
            kcli_params={"prefix": "qa"},
        )
        kube = QubinodeKubeOperator(
            task_id="kube",
            qubinode_conn_id=CONN_ID,
            cluster="edge",
            kind="k3s",
            kcli_params={"workers": 1, "pull_secret": "s3cr3t-pull"},
        )
        component = QubinodeDeployComponentOperator(
            task_id="component",
            qubinode_conn_id=CONN_ID,
            component="vyos-router",
            env={"VM_NAME": "{{ dag.dag_id }}-router", "API_TOKEN": "s3cr3t-token"},
            output_lines=1,
        )
        drop_plan = QubinodePlanOperator(
            task_id="drop_plan", qubinode_conn_id=CONN_ID, plan="lab", action="delete"
        )
        drop_kube = QubinodeKubeOperator(
            task_id="drop_kube", qubinode_conn_id=CONN_ID, cluster="edge", action="delete"
        )
        plan >> kube >> component >> [drop_plan, drop_kube]
    result = dag_runner(dag, logical_date=START)

    assert result.state == "success", result.task_states
    assert result.xcom("plan") == {"plan": "lab", "vms": ["qa-a", "qa-b"]}
    kube_info = result.xcom("kube")
    assert kube_info["cluster"] == "edge" and kube_info["vms"] == ["edge-ctlplane-0", "edge-worker-0"]
    assert result.xcom("component") == {
        "component": "vyos-router",
        "action": "create",
        "returncode": 0,
        "output_tail": ["router create for qubinode_plan_kube_component-router"],
    }
    assert result.xcom("drop_plan") == {"plan": "lab", "deleted": True}
    assert result.xcom("drop_kube") == {"cluster": "edge", "deleted": True}
    assert kcli.vms() == {}
    xcoms = _all_xcoms(result)
    assert "s3cr3t" not in xcoms
    assert "s3cr3t" not in _rendered(result, "kube") and "s3cr3t" not in _rendered(result, "component")


def test_deferrable_sensor_in_dag_test(dag_runner, airflow_conn, kcli: FakeKcli) -> None:
    from airflow_llm_provider.operators.qubinode import QubinodeCreateVMOperator
    from airflow_llm_provider.sensors.qubinode import QubinodeVMSensor

    airflow_conn(CONN_ID, {"conn_type": "qubinode", "extra": {"mode": "local", "kcli_path": str(kcli.path)}})
    kcli.configure(boot_seconds=3, boot_status="down")
    with _dag("qubinode_deferrable_dag_test") as dag:
        create = QubinodeCreateVMOperator(
            task_id="create", qubinode_conn_id=CONN_ID, vm_name="slow", image="img"
        )
        wait = QubinodeVMSensor(
            task_id="wait",
            qubinode_conn_id=CONN_ID,
            vm_name="slow",
            target_status="running",
            require_ip=True,
            deferrable=True,
            poke_interval=1,
            timeout=60,
        )
        create >> wait
    result = dag_runner(dag, logical_date=START)
    assert result.state == "success", result.task_states
    assert result.xcom("wait")["status"] == "up" and result.xcom("wait")["ip"]
    assert len(kcli.calls("info")) >= 3  # polled while the VM booted


def test_sensor_and_trigger_definitions() -> None:
    from airflow_llm_provider.sensors.qubinode import QubinodeVMSensor
    from airflow_llm_provider.triggers.qubinode import QubinodeVMTrigger

    sensor = QubinodeVMSensor(task_id="s", vm_name="a")
    assert sensor.mode == "reschedule" and sensor.deferrable is False
    trigger = QubinodeVMTrigger(vm_name="a", qubinode_conn_id="c", ssh_port=22, poke_interval=5)
    path, kwargs = trigger.serialize()
    assert path == "airflow_llm_provider.triggers.qubinode.QubinodeVMTrigger"
    assert QubinodeVMTrigger(**kwargs).serialize() == (path, kwargs)
    json.dumps(kwargs)


def test_trigger_reports_a_permanent_error_at_once(airflow_conn, kcli: FakeKcli, tmp_path: Path) -> None:
    import asyncio

    from airflow_llm_provider.triggers.qubinode import QubinodeVMTrigger

    airflow_conn(
        CONN_ID, {"conn_type": "qubinode", "extra": {"mode": "local", "kcli_path": str(tmp_path / "nokcli")}}
    )

    async def first_event() -> Any:
        trigger = QubinodeVMTrigger(vm_name="a", qubinode_conn_id=CONN_ID, poke_interval=0.1)
        async for event in trigger.run():
            return event.payload

    payload = asyncio.run(asyncio.wait_for(first_event(), 30))
    assert payload["status"] == "error"
    assert "kcli not found" in payload["message"]


def test_example_component_dag_runs_its_deploy_script(dag_runner, airflow_conn, tmp_path: Path) -> None:
    from tests.dag_loading import load_dag

    script = tmp_path / "pipelines" / "freeipa" / "deploy.sh"
    script.parent.mkdir(parents=True)
    script.write_text(
        'echo "freeipa $ACTION $VM_NAME community=$COMMUNITY_VERSION" > "$(dirname "$0")/ran"\n'
    )
    airflow_conn(
        "qubinode_default",
        {"conn_type": "qubinode", "extra": {"mode": "local", "pipelines_dir": str(tmp_path / "pipelines")}},
    )
    result = dag_runner(load_dag("example_qubinode_component"), conf={"vm_name": "ipa-1"})
    assert result.state == "success", result.task_states
    assert (script.parent / "ran").read_text() == "freeipa create ipa-1 community=true\n"
    assert result.xcom("deploy_freeipa") == {"component": "freeipa", "action": "create", "returncode": 0}
