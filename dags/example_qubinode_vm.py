"""Deploy a VM on a Qubinode host, wait for its IP in the triggerer, configure it, notify, clean up.

``create_vm`` (idempotent: a retry never builds a second VM) -> ``wait_for_ip`` (deferrable: the
VM boots while the triggerer waits, no worker slot held) -> ``configure`` (``ansible-playbook`` on
the host, with the VM's IP) -> ``notify``. ``delete_vm_on_failure`` runs only when one of those
failed (``trigger_rule="one_failed"``), so a half-built VM never lingers; a successful VM stays.

Needs a ``qubinode`` connection ``qubinode_default`` (see docs/qubinode.md) when it runs; parsing
contacts nothing.
"""

from __future__ import annotations

import pendulum
from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_llm_provider.operators.qubinode import (
    QubinodeAnsiblePlaybookOperator,
    QubinodeCreateVMOperator,
    QubinodeDeleteVMOperator,
)
from airflow_llm_provider.sensors.qubinode import QubinodeVMSensor

VM = "{{ params.vm_name }}"

with DAG(
    "example_qubinode_vm",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["example", "qubinode"],
    doc_md=__doc__,
    params={
        "vm_name": Param("demo-web-1", type="string", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
        "image": Param("centos9stream", type="string"),
        "playbook": Param("playbooks/configure-web.yml", type="string"),
    },
) as dag:
    create_vm = QubinodeCreateVMOperator(
        task_id="create_vm",
        vm_name=VM,
        image="{{ params.image }}",
        kcli_params={"memory": 4096, "numcpus": 2, "disks": [20], "nets": ["default"]},
    )
    wait_for_ip = QubinodeVMSensor(
        task_id="wait_for_ip",
        vm_name=VM,
        require_ip=True,
        ssh_port_check=True,
        deferrable=True,
        poke_interval=20,
        timeout=30 * 60,
    )
    configure = QubinodeAnsiblePlaybookOperator(
        task_id="configure",
        playbook="{{ params.playbook }}",
        extra_vars={"vm_name": VM, "vm_ip": "{{ ti.xcom_pull(task_ids='wait_for_ip')['ip'] }}"},
    )

    @task
    def notify(vm: dict, recap: dict) -> str:
        message = f"VM {vm['name']} is up at {vm.get('ip')}; playbook recap: {recap.get('recap')}"
        print(message)  # swap in a notifier (Slack, e-mail) via on_success_callback in real DAGs
        return message

    delete_vm = QubinodeDeleteVMOperator(
        task_id="delete_vm_on_failure", vm_name=VM, trigger_rule="one_failed"
    )

    create_vm >> wait_for_ip >> configure
    notify(wait_for_ip.output, configure.output)
    [create_vm, wait_for_ip, configure] >> delete_vm
