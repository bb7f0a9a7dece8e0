"""Deploy a Qubinode component (FreeIPA) through its kcli-pipelines ``deploy.sh``.

The way Qubinode's own DAGs drive components, minus the hand-built ssh strings: the script
``<pipelines_dir>/freeipa/deploy.sh`` runs on the host with ``ACTION``, ``CICD_PIPELINE=true`` and
the component's variables set, its output streamed into the task log. Trigger with conf
``{"action": "delete"}`` to remove the component.

Needs a ``qubinode`` connection ``qubinode_default`` whose extra ``pipelines_dir`` points at the
qubinode-pipelines checkout on the host (see docs/qubinode.md); parsing contacts nothing.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.common.compat.sdk import DAG, Param

from airflow_llm_provider.operators.qubinode import QubinodeDeployComponentOperator

with DAG(
    "example_qubinode_component",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["example", "qubinode"],
    doc_md=__doc__,
    params={
        "action": Param("create", enum=["create", "delete"]),
        "vm_name": Param("freeipa", type="string"),
        "community_version": Param(True, type="boolean"),
    },
) as dag:
    deploy = QubinodeDeployComponentOperator(
        task_id="deploy_freeipa",
        component="freeipa",
        action="{{ params.action }}",
        env={
            "VM_NAME": "{{ params.vm_name }}",
            "COMMUNITY_VERSION": "{{ params.community_version | lower }}",
            "TARGET_SERVER": "localhost",
        },
        execution_timeout=timedelta(hours=2),
    )
