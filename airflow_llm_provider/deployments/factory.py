"""DAGs from a deployment spec: fan out over every VM of every target with dynamic task mapping.

``deployment_dags(spec_file)`` returns two DAGs:

* ``deploy_<deployment>``: ``select_vms`` (the spec's VMs, optionally only the targets named in the
  run's conf ``{"targets": [...]}``) -> ``create_vm`` (mapped, idempotent: a rerun never builds a
  second VM) -> ``wait_vm`` (mapped sensor; deferrable by default: no worker slot while VMs boot)
  -> ``summary``.
* ``destroy_<deployment>``: ``select_vms`` -> ``delete_vm`` (mapped, a missing VM is fine).

Single runner per deployment: both DAGs have ``max_active_runs=1``, and both put their kcli tasks in
``pool`` when one is given. A one-slot pool shared by the two DAGs (``airflow pools set
deploy_web_tier 1 ...``) also keeps a destroy from running while a deploy creates the same VMs.

The spec is validated when the DAG file is parsed (an invalid spec is an import error naming file,
line and field); the hosts are only contacted when tasks run.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow_llm_provider.deployments.spec import DeploymentSpec, load_deployment_spec


def _select(items: list[dict[str, Any]], wanted: Any, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    if wanted:
        known = {item["target"] for item in items}
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise ValueError(f"Unknown targets in the run's conf: {unknown}; the spec has {sorted(known)}")
        items = [item for item in items if item["target"] in wanted]
    return [{key: item[key] for key in keys} for item in items]


CREATE_KEYS = ("vm_name", "image", "profile", "kcli_params", "qubinode_conn_id", "kcli_client")
WAIT_KEYS = ("vm_name", "qubinode_conn_id", "kcli_client")


def _operator_items(spec: DeploymentSpec) -> list[dict[str, Any]]:
    return [
        {
            "target": item["target"],
            "vm_name": item["vm_name"],
            "image": item["image"],
            "profile": item["profile"],
            "kcli_params": item["params"],
            "qubinode_conn_id": item["conn_id"],
            "kcli_client": item["kcli_client"],
        }
        for item in spec.vm_items()
    ]


def deployment_dags(
    spec_file: str | os.PathLike[str],
    *,
    pool: str | None = None,
    tags: list[str] | None = None,
    doc_md: str | None = None,
    **dag_kwargs: Any,
) -> dict[str, Any]:
    """``{dag_id: DAG}`` for the spec's deploy and destroy DAGs (put them in the module's globals).

    :param spec_file: the YAML spec (relative paths: relative to the caller's working directory;
        pass ``Path(__file__).parent / ...`` from a DAG file).
    :param pool: pool for the kcli tasks (a one-slot pool serialises deployments on a host).
    :param dag_kwargs: more ``DAG`` arguments (``schedule``, ``start_date``, ``default_args``...).
    """
    from airflow.providers.common.compat.sdk import DAG, task

    from airflow_llm_provider.operators.qubinode import QubinodeCreateVMOperator, QubinodeDeleteVMOperator
    from airflow_llm_provider.sensors.qubinode import QubinodeVMSensor

    spec = load_deployment_spec(Path(spec_file))
    items = _operator_items(spec)
    name = spec.deployment.replace("-", "_")
    pool_kwargs: dict[str, Any] = {"pool": pool} if pool else {}
    schedule = dag_kwargs.pop("schedule", None)
    common: dict[str, Any] = {
        "catchup": False,
        "max_active_runs": 1,
        "tags": list(tags or ["qubinode", "deployment"]),
        **dag_kwargs,
    }
    if "start_date" not in common:
        from datetime import UTC, datetime

        common["start_date"] = datetime(2026, 1, 1, tzinfo=UTC)
    doc = doc_md or f"Deployment `{spec.deployment}` from `{Path(spec_file).name}`. {spec.description or ''}"
    targets = ", ".join(sorted({i["target"] for i in items}))

    with DAG(
        f"deploy_{name}", schedule=schedule, doc_md=f"{doc}\n\nCreates every VM on: {targets}.", **common
    ) as deploy:

        @task(task_id="select_vms")
        def select_create(**context: Any) -> list[dict[str, Any]]:
            conf = (context.get("dag_run") and context["dag_run"].conf) or {}
            return _select(items, conf.get("targets"), CREATE_KEYS)

        @task(task_id="select_waits")
        def select_waits(chosen: Any) -> list[dict[str, Any]]:
            return [{key: item[key] for key in WAIT_KEYS} for item in chosen]

        @task(task_id="summary")
        def summary(vms: Any) -> list[dict[str, Any]]:
            return [dict(vm) for vm in vms]

        chosen = select_create()
        create = QubinodeCreateVMOperator.partial(task_id="create_vm", **pool_kwargs).expand_kwargs(chosen)
        waits = select_waits(chosen)
        wait = QubinodeVMSensor.partial(
            task_id="wait_vm",
            require_ip=spec.wait.require_ip,
            ssh_port_check=spec.wait.ssh_port_check,
            deferrable=spec.wait.deferrable,
            poke_interval=spec.wait.poke_interval_seconds,
            timeout=timedelta(minutes=spec.wait.timeout_minutes).total_seconds(),
        ).expand_kwargs(waits)
        create >> waits
        summary(wait.output)

    with DAG(
        f"destroy_{name}",
        schedule=schedule,
        doc_md=f"{doc}\n\nDeletes every VM of the deployment on: {targets}.",
        **common,
    ) as destroy:

        @task(task_id="select_vms")
        def select_delete(**context: Any) -> list[dict[str, Any]]:
            conf = (context.get("dag_run") and context["dag_run"].conf) or {}
            return _select(items, conf.get("targets"), WAIT_KEYS)

        QubinodeDeleteVMOperator.partial(task_id="delete_vm", missing_ok=True, **pool_kwargs).expand_kwargs(
            select_delete()
        )

    return {deploy.dag_id: deploy, destroy.dag_id: destroy}
