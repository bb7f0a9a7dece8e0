"""OpenLineage metadata of the Qubinode operators and the VM sensor: VMs, plans, clusters,
kcli-pipelines components and playbooks as datasets.

The one implementation behind ``get_openlineage_facets_on_start/complete/failure`` of
:class:`~airflow_llm_provider.operators.qubinode.QubinodeBaseOperator` (all Qubinode operators),
of :class:`~airflow_llm_provider.sensors.qubinode.QubinodeVMSensor`, and behind the extractors in
:mod:`airflow_llm_provider.lineage.qubinode_extractors`. Imported only from those methods: it
imports the OpenLineage client (an optional dependency) at import time.

**Datasets.** A namespace per place where kcli acts, a name per resource:

- namespace ``kcli://<client>`` when a kcli ``-C`` client is set (operator ``kcli_client`` or the
  connection's extra: ``kcli://aws``, ``kcli://gcp``, a remote KVM host's client name), otherwise
  ``kcli://<hypervisor host>``: the connection's SSH host (lower case, without the SSH port), or the
  Airflow machine's host name in local mode and when the SSH host is ``localhost``/a loopback address
  (Qubinode's usual setup: Airflow in a container on the hypervisor's network);
- names ``vm/<name>``, ``plan/<plan>``, ``kube/<cluster>``; components and playbooks run on the
  hypervisor itself, so they are always in its host namespace: ``component/<component>``,
  ``playbook/<absolute path on the host>``.

Outputs: what an operator creates, changes or deletes (plans and clusters with the VMs kcli
reported for them on complete; a component with its ``VM_NAME`` VM). Input: the VM a sensor waits
for. Each dataset carries the ``airflowLlm_qubinodeResource`` facet (kind, action, image, profile,
client, params, status...) and, for create/delete, OpenLineage's ``lifecycleStateChange``.

**Privacy.** Params (kcli ``-P``, component ``env``, playbook ``extra_vars``) go through the hook's
own redaction (:func:`~airflow_llm_provider.hooks.qubinode.redact`): values of secret-looking keys
(``*password*``, ``*secret*``, ``*token*``, ``*key*``...), nested ones included, become ``***``. No
connection field (password, private key, passphrase), no plan URL credentials, no script output.
On failure the ``errorMessage`` facet has the error text with those secret values replaced too.
"""

from __future__ import annotations

import logging
import posixpath
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from attrs import define
from openlineage.client.facet_v2 import DatasetFacet

from airflow_llm_provider.lineage.facets import PRODUCER, SCHEMA_BASE
from airflow_llm_provider.operators.qubinode import public_params

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset

log = logging.getLogger(__name__)

Moment = Literal["start", "complete", "failure"]
RESOURCE_FACET = "airflowLlm_qubinodeResource"
SCHEME = "kcli"
LOOPBACK_HOSTS = ("localhost", "localhost.localdomain", "ip6-localhost", "127.0.0.1", "::1")
REDACTED = "***"


@define
class QubinodeResourceDatasetFacet(DatasetFacet):
    """What a Qubinode task did to (or read from) one VM, plan, cluster, component or playbook."""

    kind: str
    """``vm``, ``plan``, ``cluster``, ``component`` or ``playbook``."""
    action: str | None = None
    """``create``, ``delete``, ``start``, ``stop``, ``restart``, ``run`` (playbook), ``wait`` (sensor)."""
    kcliClient: str | None = None
    image: str | None = None
    profile: str | None = None
    clusterType: str | None = None
    """kcli kube kind: ``generic``, ``openshift``, ``k3s``..."""
    source: str | None = None
    """Plan file or URL (without credentials), component script, playbook path."""
    paramfile: str | None = None
    params: dict[str, Any] | None = None
    """kcli ``-P`` params / component env / playbook extra vars; secret-looking keys ``***``."""
    inventory: str | None = None
    limit: str | None = None
    status: str | None = None
    """After the task: the VM's status (``up``, ``down``), or ``deleted`` / ``absent``."""
    ip: str | None = None
    vms: list[str] | None = None
    """The VMs kcli reported for a plan or cluster."""

    _additional_skip_redact = [
        "kind",
        "action",
        "kcliClient",
        "image",
        "profile",
        "clusterType",
        "source",
        "paramfile",
        "inventory",
        "limit",
        "status",
        "ip",
        "vms",
    ]

    @staticmethod
    def _get_schema() -> str:
        name = "QubinodeResourceDatasetFacet"
        return f"{SCHEMA_BASE}/{name}.json#/$defs/{name}"

    def __attrs_post_init__(self) -> None:
        if not self._producer:
            self._producer = PRODUCER
        super().__attrs_post_init__()


# ---------------------------------------------------------------------------------------- naming


@dataclass(frozen=True)
class QubinodeTarget:
    """Where a task's resources live, as dataset namespaces."""

    host_namespace: str
    """``kcli://<hypervisor>``: components, playbooks, and kcli resources without a client."""
    kcli_client: str | None
    pipelines_dir: str | None = None
    navigator_dir: str | None = None

    @property
    def namespace(self) -> str:
        """Namespace of kcli's VMs, plans and clusters: per client if one is set, else per host."""
        return f"{SCHEME}://{self.kcli_client}" if self.kcli_client else self.host_namespace


def host_name(host: str | None, mode: str = "ssh") -> str:
    """The hypervisor's name in a namespace: the SSH host, or this machine for local mode/loopback."""
    if mode == "local" or not host or host.strip("[]").lower() in LOOPBACK_HOSTS:
        return socket.gethostname().lower()
    return host.strip("[]").lower()


def resolve_target(conn_id: str, kcli_client: str | None = None) -> QubinodeTarget:
    """Resolve the ``qubinode`` connection (no SSH session is opened) into namespaces.

    An unresolvable connection gives ``kcli://<conn_id>`` and a warning, not an error: lineage
    must never fail a task.
    """
    from airflow_llm_provider.hooks.qubinode import QubinodeHook

    try:
        settings = QubinodeHook(qubinode_conn_id=conn_id, kcli_client=kcli_client or None).settings
    except Exception as err:
        log.warning("OpenLineage: cannot resolve Qubinode connection %r (%s)", conn_id, type(err).__name__)
        return QubinodeTarget(host_namespace=f"{SCHEME}://{conn_id}", kcli_client=kcli_client or None)
    return QubinodeTarget(
        host_namespace=f"{SCHEME}://{host_name(settings.host, settings.mode)}",
        kcli_client=settings.kcli_client or None,
        pipelines_dir=settings.pipelines_dir,
        navigator_dir=settings.navigator_dir,
    )


def _target_of(task: Any) -> QubinodeTarget:
    """Resolved once per task instance (the templates are rendered before the first event)."""
    key = (task.qubinode_conn_id, task.kcli_client or None)
    cached = getattr(task, "_lineage_target", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    target = resolve_target(*key)
    task._lineage_target = (key, target)
    return target


# ---------------------------------------------------------------------------------------- privacy


def public_url(url: str) -> str:
    """A URL without user info, query or fragment (where tokens hide)."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
    except ValueError:
        return REDACTED
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# --------------------------------------------------------------------------------------- datasets


def resource_dataset(
    namespace: str,
    name: str,
    *,
    kind: str,
    lifecycle: str | None = None,
    **details: Any,
) -> Dataset:
    """One dataset with our resource facet (``None`` details left out) and, for ``lifecycle``
    ``CREATE``/``DROP``/``ALTER``, OpenLineage's ``lifecycleStateChange`` facet."""
    from openlineage.client.event_v2 import Dataset
    from openlineage.client.facet_v2 import lifecycle_state_change_dataset as lifecycle_facet

    details["params"] = details.get("params") or None  # no empty {}
    facets: dict[str, Any] = {RESOURCE_FACET: QubinodeResourceDatasetFacet(kind=kind, **details)}
    if lifecycle:
        facets["lifecycleStateChange"] = lifecycle_facet.LifecycleStateChangeDatasetFacet(
            lifecycleStateChange=lifecycle_facet.LifecycleStateChange(lifecycle)
        )
    return Dataset(namespace=namespace, name=name, facets=facets)


def vm_dataset(target: QubinodeTarget, name: str, **details: Any) -> Dataset:
    return resource_dataset(target.namespace, f"vm/{name}", kind="vm", **details)


def _lifecycle(action: str | None) -> str | None:
    return {"create": "CREATE", "delete": "DROP"}.get(str(action))


def _vm_facts(vm: Any) -> dict[str, Any]:
    """Status/ip/image/profile that kcli reported (an operator's XCom summary or VM info)."""
    if not isinstance(vm, Mapping):
        return {}
    facts = {key: vm.get(key) for key in ("status", "ip", "image", "profile")}
    return {key: str(value) for key, value in facts.items() if value not in (None, "")}


def _names(values: Any) -> list[str]:
    if isinstance(values, str):
        return [values]
    if isinstance(values, Iterable) and not isinstance(values, Mapping):
        return [str(v) for v in values if isinstance(v, str | int) and str(v)]
    return []


def _absolute(path: str, base: str | None) -> str:
    if posixpath.isabs(path) or not base:
        return posixpath.normpath(path)
    return posixpath.normpath(posixpath.join(base, path))


def task_datasets(task: Any, moment: Moment) -> tuple[list[Dataset], list[Dataset]]:
    """Inputs and outputs of a Qubinode operator or sensor at ``moment`` (see the module doc)."""
    from airflow_llm_provider.operators import qubinode as ops
    from airflow_llm_provider.sensors.qubinode import QubinodeVMSensor

    target = _target_of(task)
    client = target.kcli_client
    done = moment == "complete"
    result: Any = getattr(task, "_lineage_result", None) if done else None
    result = result if isinstance(result, Mapping) else {}

    if isinstance(task, QubinodeVMSensor):
        vm = getattr(task, "_lineage_vm", None) if done else None
        details = {"action": "wait", "kcliClient": client, **_vm_facts(vm)}
        return [vm_dataset(target, task.vm_name, **details)], []

    if isinstance(task, ops.QubinodeCreateVMOperator):
        details = {
            "action": "create",
            "kcliClient": client,
            "image": task.image or None,
            "profile": task.profile or None,
            "params": public_params(task.kcli_params),
        }
        details.update(_vm_facts(result))
        return [], [vm_dataset(target, task.vm_name, lifecycle="CREATE", **details)]

    if isinstance(task, ops.QubinodeDeleteVMOperator):
        status = None
        if done:
            status = "deleted" if result.get("deleted") else "absent"
        return [], [
            vm_dataset(
                target, task.vm_name, lifecycle="DROP", action="delete", kcliClient=client, status=status
            )
        ]

    if isinstance(task, ops.QubinodeVMActionOperator):
        details = {"action": task.action, "kcliClient": client, **_vm_facts(result)}
        return [], [vm_dataset(target, task.vm_name, **details)]

    if isinstance(task, ops.QubinodePlanOperator):
        source = task.plan_file or (public_url(task.url) if task.url else None)
        vms = _names(result.get("vms")) if task.action == "create" else []
        plan = resource_dataset(
            target.namespace,
            f"plan/{task.plan}",
            kind="plan",
            lifecycle=_lifecycle(task.action),
            action=task.action,
            kcliClient=client,
            source=source if task.action == "create" else None,
            paramfile=task.paramfile or None,
            params=public_params(task.kcli_params) if task.action == "create" else {},
            status=_crud_status(task.action, result) if done else None,
            vms=vms or None,
        )
        return [], [plan, *(vm_dataset(target, vm, lifecycle="CREATE", kcliClient=client) for vm in vms)]

    if isinstance(task, ops.QubinodeKubeOperator):
        vms = _names(result.get("vms")) if task.action == "create" else []
        create = task.action == "create"
        cluster = resource_dataset(
            target.namespace,
            f"kube/{task.cluster}",
            kind="cluster",
            lifecycle=_lifecycle(task.action),
            action=task.action,
            kcliClient=client,
            clusterType=(str(result.get("type") or task.kind) if create else None),
            paramfile=task.paramfile or None,
            params=public_params(task.kcli_params) if create else {},
            status=_crud_status(task.action, result) if done else None,
            vms=vms or None,
        )
        return [], [cluster, *(vm_dataset(target, vm, lifecycle="CREATE", kcliClient=client) for vm in vms)]

    if isinstance(task, ops.QubinodeDeployComponentOperator):
        base = task.base_dir or target.pipelines_dir
        source = f"{base.rstrip('/')}/{task.component}/{task.script}" if base else None
        component = resource_dataset(
            target.host_namespace,
            f"component/{task.component}",
            kind="component",
            lifecycle=_lifecycle(task.action),
            action=task.action,
            source=source,
            params=public_params(task.env),
        )
        outputs = [component]
        vm_name = (task.env or {}).get("VM_NAME")
        if isinstance(vm_name, str) and vm_name:  # the kcli-pipelines convention: the VM it deploys
            host_vm = QubinodeTarget(host_namespace=target.host_namespace, kcli_client=None)
            outputs.append(
                vm_dataset(host_vm, vm_name, lifecycle=_lifecycle(task.action), action=task.action)
            )
        return [], outputs

    if isinstance(task, ops.QubinodeAnsiblePlaybookOperator):
        path = _absolute(task.playbook, task.cwd or target.navigator_dir)
        playbook = resource_dataset(
            target.host_namespace,
            f"playbook/{path.lstrip('/')}",
            kind="playbook",
            action="check" if task.check else "run",
            source=path,
            params=public_params(task.extra_vars),
            inventory=task.inventory or None,
            limit=task.limit or None,
        )
        return [], [playbook]

    return [], []


def _crud_status(action: str, result: Mapping[str, Any]) -> str | None:
    if action == "delete":
        return "deleted" if result.get("deleted") else "absent"
    return "created" if result else None


def error_text(task: Any, message: str) -> str:
    """An error message with the values of the task's secret-looking params replaced by ``***``
    (``execute`` already scrubbed the exception; this covers a message set any other way)."""
    from airflow_llm_provider.operators.qubinode import SECRET_BEARING_FIELDS, secret_values

    secrets = [v for name in SECRET_BEARING_FIELDS for v in secret_values(getattr(task, name, None))]
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, REDACTED)
    return message


# ----------------------------------------------------------------------------------------- entry


def qubinode_lineage(task: Any, moment: Moment, task_instance: Any = None) -> OperatorLineage:
    """``OperatorLineage`` of a Qubinode operator or VM sensor at ``moment``.

    Complete/failure read what ``execute`` left on the task (``_lineage_result``,
    ``_lineage_error``, the sensor's ``_lineage_vm``); the task's own ``inlets``/``outlets`` are
    added (the provider reads them only when an operator reports no dataset at all).
    """
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.facet_v2 import error_message_run

    from airflow_llm_provider.lineage.cascade import declared_datasets

    inputs, outputs = task_datasets(task, moment)
    declared_in, declared_out = declared_datasets(task)
    run_facets: dict[str, Any] = {}
    if moment == "failure":
        message = getattr(task, "_lineage_error", None)
        if message:
            run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=error_text(task, message), programmingLanguage="python"
            )
    return OperatorLineage(
        inputs=_unique([*inputs, *declared_in]),
        outputs=_unique([*outputs, *declared_out]),
        run_facets=run_facets,
    )


def _unique(datasets: Iterable[Dataset]) -> list[Dataset]:
    seen: set[tuple[str, str]] = set()
    found: list[Dataset] = []
    for dataset in datasets:
        if (dataset.namespace, dataset.name) not in seen:
            seen.add((dataset.namespace, dataset.name))
            found.append(dataset)
    return found
