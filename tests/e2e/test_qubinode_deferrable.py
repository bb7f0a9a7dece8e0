"""A deferrable QubinodeVMSensor under a real deployment: the wait happens in the triggerer.

The stand-in kcli is reached over Debian's real sshd; its VM is "up" at once but gets no IP until a
file appears. While the file is missing the sensor's task instance must sit in ``deferred`` (so no
executor slot and no worker process holds it), nothing else may be running, and the triggerer must
keep polling kcli over SSH; once the file appears the run must finish with the VM's IP in XCom.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from tests.fixtures.sshd import SshServer
from tests.support.fake_kcli import install

pytestmark = pytest.mark.e2e

DAG_ID = "qubinode_deferrable_e2e"
CONN_ID = "qubinode_e2e"

DAG_FILE = textwrap.dedent(
    f'''\
    """A VM created over SSH, then waited for by a deferrable sensor (written by the e2e test)."""
    import pendulum
    from airflow.providers.common.compat.sdk import DAG

    from airflow_llm_provider.operators.qubinode import QubinodeCreateVMOperator
    from airflow_llm_provider.sensors.qubinode import QubinodeVMSensor

    with DAG(
        "{DAG_ID}",
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        tags=["test"],
    ):
        create = QubinodeCreateVMOperator(
            task_id="create_vm", qubinode_conn_id="{CONN_ID}", vm_name="slow-vm", image="centos9stream"
        )
        wait = QubinodeVMSensor(
            task_id="wait_for_ip",
            qubinode_conn_id="{CONN_ID}",
            vm_name="slow-vm",
            target_status="running",
            require_ip=True,
            deferrable=True,
            poke_interval=2,
            timeout=600,
        )
        create >> wait
    '''
)


def _states(server, run_id: str) -> dict[str, str]:
    return {ti["task_id"]: ti["state"] for ti in server.task_instances(DAG_ID, run_id)}


def test_deferrable_vm_sensor_waits_in_the_triggerer(airflow_server, sshd: SshServer, tmp_path: Path) -> None:
    kcli = install(tmp_path / "bin", tmp_path / "kcli-state.json")
    booted = tmp_path / "booted"
    kcli.configure(ready_file=str(booted))
    airflow_server.create_connection(CONN_ID, sshd.qubinode_connection(kcli_path=str(kcli.path)))
    (airflow_server.dags_folder / f"{DAG_ID}.py").write_text(DAG_FILE)
    airflow_server.wait_for_dag(DAG_ID, timeout=180)
    airflow_server.unpause(DAG_ID)
    run_id = airflow_server.trigger(DAG_ID)

    # Wait for the sensor to defer, then watch it stay deferred while the VM has no IP.
    deadline = time.monotonic() + 180
    while _states(airflow_server, run_id).get("wait_for_ip") != "deferred":
        airflow_server.check_alive()
        states = _states(airflow_server, run_id)
        assert time.monotonic() < deadline, (
            f"never deferred: {states}\n{airflow_server.log_tail('scheduler')}"
        )
        assert airflow_server.dag_run(DAG_ID, run_id)["state"] in ("queued", "running")
        time.sleep(1)
    assert kcli.vms()["slow-vm"]["status"] == "up"  # created, booting: no IP yet
    polls_at_deferral = len(kcli.calls("info"))
    # Until the triggerer has polled kcli a few times (poke_interval=2), the sensor stays deferred:
    # no executor slot, no worker process, nothing running.
    deadline = time.monotonic() + 90
    while len(polls := kcli.calls("info")[polls_at_deferral:]) < 3:
        states = _states(airflow_server, run_id)
        assert states == {"create_vm": "success", "wait_for_ip": "deferred"}, states
        assert time.monotonic() < deadline, f"the triggerer polled kcli {len(polls)} times in 90 s"
        time.sleep(1)
    assert all(call["via_ssh"] for call in polls)

    booted.touch()
    run = airflow_server.wait_for_run(DAG_ID, run_id, timeout=120)
    assert run["state"] == "success", airflow_server.log_tail("triggerer")
    (sensor,) = [ti for ti in airflow_server.task_instances(DAG_ID, run_id) if ti["task_id"] == "wait_for_ip"]
    assert sensor["try_number"] == 1  # resumed after the trigger fired, not retried
    vm = airflow_server.xcom(DAG_ID, run_id, "wait_for_ip")
    assert vm["name"] == "slow-vm" and vm["status"] == "up" and vm["ip"].startswith("192.168.122.")
    assert len(kcli.calls("create")) == 1
    # The trigger's own progress lines (written in the triggerer) reach the task's log.
    task_log = airflow_server.task_log(DAG_ID, run_id, "wait_for_ip")
    assert "has no IP yet; next check in 2.0s" in task_log, task_log[-3000:]
