"""Operators for Qubinode hypervisors: kcli VMs, plans and clusters, kcli-pipelines components and
ansible playbooks, each a thin layer over :class:`~airflow_llm_provider.hooks.qubinode.QubinodeHook`.

What they share:

* every name, image, parameter and environment value is templated and reaches the host as one
  argv item (never through a hand-built shell string);
* XCom carries JSON-safe summaries only: VM/plan/cluster info without kcli parameters, exit codes,
  an ansible recap. Values of secret-looking keys (``*password*``, ``*secret*``, ``*token*``...) are
  masked in the task log (Airflow also redacts them in rendered fields by key name) and never returned;
* the hook (and paramiko behind it) is imported inside ``execute``: DAG parsing stays cheap;
* OpenLineage: each operator keeps its target in plain attributes (``vm_name``, ``plan``,
  ``cluster``, ``component``, ``playbook``); :class:`QubinodeBaseOperator` turns them into datasets
  in ``get_openlineage_facets_on_start/complete/failure`` through
  :mod:`airflow_llm_provider.lineage.qubinode` (imported inside those methods only, so OpenLineage
  stays optional).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

    from airflow_llm_provider.hooks.qubinode import CommandResult, QubinodeHook

DEFAULT_CONN_ID = "qubinode_default"
VM_ACTIONS = ("start", "stop", "restart")
CRUD_ACTIONS = ("create", "delete")
# Keys returned from kcli's VM info; anything else (kcli params, cloud-init data) stays out of XCom.
VM_XCOM_KEYS = ("name", "status", "ip", "ips", "image", "profile", "plan", "numcpus", "memory", "user")
REDACTED = "***"
MIN_SECRET_LENGTH = 5
# Operator attributes holding values that may be secret (kcli -P params, script env, extra vars).
SECRET_BEARING_FIELDS = ("kcli_params", "env", "extra_vars")
SECRET_KEY = re.compile(r"pass|secret|token|credential|api_?key|private|auth", re.IGNORECASE)
RECAP_LINE = re.compile(r"^(?P<host>\S+)\s*:\s*(?P<counts>(?:\w+=\d+\s*)+)$")


def vm_summary(vm: Mapping[str, Any] | None, **extra: Any) -> dict[str, Any]:
    """The JSON-safe part of kcli's VM info that operators return."""
    data = {k: vm[k] for k in VM_XCOM_KEYS if vm and vm.get(k) not in (None, "")}
    return {**data, **extra}


def public_entry(entry: Mapping[str, Any] | None) -> dict[str, Any]:
    """A kcli list entry without secret-looking keys and with JSON-safe values."""
    out: dict[str, Any] = {}
    for key, value in (entry or {}).items():
        if SECRET_KEY.search(str(key)):
            continue
        out[str(key)] = (
            value if isinstance(value, str | int | float | bool | list | type(None)) else str(value)
        )
    return out


def mask_secret_values(values: Mapping[str, Any] | None) -> None:
    """Register values of secret-looking keys with Airflow's secrets masker (task log redaction)."""
    if not values:
        return
    from airflow.providers.common.compat.sdk import mask_secret

    for key, value in values.items():
        if isinstance(value, Mapping):
            mask_secret_values(value)
        elif SECRET_KEY.search(str(key)) and value not in (None, ""):
            mask_secret(str(value))


def public_params(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """``values`` (JSON-safe) with every value under a secret-looking key, at any depth, as ``***``.

    Uses the hook's own :func:`~airflow_llm_provider.hooks.qubinode.redact` (the one behind logged
    commands and error messages): a JSON ``--extra-vars`` item is redacted key by key, nested
    mappings and lists included, so what this returns hides exactly what the task log hides.
    """
    from airflow_llm_provider.hooks.qubinode import redact

    if not values:
        return {}
    text = json.dumps(dict(values), separators=(",", ":"), sort_keys=True, default=str)
    redacted: dict[str, Any] = json.loads(redact(["--extra-vars", text])[1])
    return redacted


def secret_values(values: Mapping[str, Any] | None) -> list[str]:
    """The values :func:`public_params` hides, as text (a hidden mapping or list as its JSON);
    shorter than Airflow's ``min_length_masked_secret`` default (5) left out, as its masker does."""
    found: list[str] = []

    def walk(original: Any, public: Any) -> None:
        if isinstance(original, Mapping) and isinstance(public, Mapping):
            for key, value in original.items():
                walk(value, public.get(str(key)))
        elif isinstance(original, list) and isinstance(public, list):
            for item, public_item in zip(original, public, strict=False):
                walk(item, public_item)
        elif public == REDACTED and original not in (None, REDACTED):
            text = original if isinstance(original, str) else json.dumps(original, default=str)
            if len(text) >= MIN_SECRET_LENGTH:
                found.append(text)

    if values:
        walk(json.loads(json.dumps(dict(values), default=str)), public_params(values))
    return found


def scrub_exception(err: BaseException, secrets: Sequence[str]) -> None:
    """Replace ``secrets`` by ``***`` in ``err``'s message (and a command error's stderr/stdout).

    A script may echo a secret it was given into the stderr that the error message quotes. The task
    log masks it, but not everything that reports the exception does (OpenLineage's FAIL event).
    """
    if not secrets:
        return

    def scrub(text: Any) -> Any:
        if not isinstance(text, str):
            return text
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text

    err.args = tuple(scrub(arg) for arg in err.args)
    for name in ("stderr", "stdout"):
        if isinstance(getattr(err, name, None), str):
            setattr(err, name, scrub(getattr(err, name)))


def check_kcli_fields(task: Any, fields: Sequence[str], params_field: str | None = None) -> None:
    """Apply kcli's argument rules (``deployments/kcli_args.py``) to a task's values when it is
    built, so a DAG author sees a bad name in the DAG import error, not in a failed run. Values not
    known yet (empty, an ``XComArg``, a template rendering to something else) are checked again by
    the hook, right before kcli runs."""
    from airflow_llm_provider.deployments.kcli_args import check_kcli_value, params_problems

    for name in fields:
        value = getattr(task, name, None)
        if isinstance(value, str) and value:
            check_kcli_value(value, name)
    if params_field is not None:
        problems = params_problems(getattr(task, params_field, None), params_field)
        if problems:
            raise ValueError("; ".join(problems))


def parse_ansible_recap(stdout: str) -> dict[str, dict[str, int]]:
    """``PLAY RECAP`` lines -> ``{host: {"ok": 2, "changed": 0, "failed": 0, ...}}``."""
    recap: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in stdout.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        match = RECAP_LINE.match(line.strip()) if in_recap else None
        if match:
            counts = dict(item.split("=") for item in match["counts"].split())
            recap[match["host"]] = {k: int(v) for k, v in counts.items()}
    return recap


class QubinodeLineageMixin:
    """OpenLineage methods of every Qubinode operator and the VM sensor: one implementation,
    :func:`airflow_llm_provider.lineage.qubinode.qubinode_lineage` (the VM, plan, cluster, component
    or playbook as datasets per hypervisor host or kcli client, the airflowLlm_qubinodeResource
    facet without secrets, errorMessage on failure), imported only when OpenLineage asks."""

    def get_openlineage_facets_on_start(self) -> OperatorLineage:
        from airflow_llm_provider.lineage.qubinode import qubinode_lineage

        return qubinode_lineage(self, "start")

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        from airflow_llm_provider.lineage.qubinode import qubinode_lineage

        return qubinode_lineage(self, "complete", task_instance)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> OperatorLineage:
        from airflow_llm_provider.lineage.qubinode import qubinode_lineage

        return qubinode_lineage(self, "failure", task_instance)


class QubinodeBaseOperator(QubinodeLineageMixin, BaseOperator):
    """
    Shared plumbing: the ``qubinode`` connection, one hook (one SSH session) per execution.

    :param qubinode_conn_id: the ``qubinode`` connection (templated).
    :param kcli_client: kcli ``-C`` client overriding the connection's ``kcli_client`` (templated):
        ``aws``, ``gcp``, ``azure`` or a remote KVM host from ``~/.kcli/config.yml`` on the host.
    :param cmd_timeout: seconds one command may run (default: the connection's ``cmd_timeout``).
    """

    template_fields: Sequence[str] = ("qubinode_conn_id", "kcli_client")
    ui_color = "#fde9d9"
    # What execute() leaves for the OpenLineage methods (complete/failure); never sent elsewhere.
    _lineage_result: Any = None
    _lineage_error: str | None = None

    def __init__(
        self,
        *,
        qubinode_conn_id: str = DEFAULT_CONN_ID,
        kcli_client: str | None = None,
        cmd_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.qubinode_conn_id = qubinode_conn_id
        self.kcli_client = kcli_client
        self.cmd_timeout = cmd_timeout
        check_kcli_fields(self, ("kcli_client",))

    def get_hook(self) -> QubinodeHook:
        from airflow_llm_provider.hooks.qubinode import QubinodeHook

        return QubinodeHook(
            qubinode_conn_id=self.qubinode_conn_id,
            cmd_timeout=self.cmd_timeout,
            kcli_client=self.kcli_client or None,
        )

    def qubinode_target(self) -> dict[str, Any]:
        """Where the work happens (connection and kcli client): for logs and, later, lineage."""
        return {"conn_id": self.qubinode_conn_id, "kcli_client": self.kcli_client or None}

    def secret_values(self) -> list[str]:
        """Values of this task's secret-looking params/env/extra vars (never logged or emitted)."""
        return [v for name in SECRET_BEARING_FIELDS for v in secret_values(getattr(self, name, None))]

    def execute(self, context: Any) -> Any:
        self._lineage_result = self._lineage_error = None
        try:
            with self.get_hook() as hook:
                result = self.execute_with_hook(hook, context)
        except Exception as err:
            scrub_exception(err, self.secret_values())
            self._lineage_error = str(err) or type(err).__name__
            raise
        self._lineage_result = result
        return result

    def execute_with_hook(self, hook: QubinodeHook, context: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    # -- OpenLineage (airflow_llm_provider.lineage.qubinode, imported only here) -------------------


class QubinodeCreateVMOperator(QubinodeBaseOperator):
    """
    Create a VM with kcli unless it exists (idempotent: a retry or rerun never builds a second one).

    Returns ``{"name", "status", "ip"?, "image", "profile", "plan", ..., "created": bool}``.

    :param vm_name: the VM (templated).
    :param image: kcli image (``-i``), or
    :param profile: kcli profile (``-p``) (templated).
    :param kcli_params: kcli parameters, each ``-P key=value`` (templated; ``params`` is Airflow's), e.g.
        ``{"memory": 4096, "numcpus": 2, "disks": [20], "nets": ["default"]}``.
    :param wait: kcli ``--wait`` (needs a usable SSH key on the host). To wait for the IP without
        holding a worker, use :class:`~airflow_llm_provider.sensors.qubinode.QubinodeVMSensor`
        with ``deferrable=True`` instead.
    """

    template_fields: Sequence[str] = (
        *QubinodeBaseOperator.template_fields,
        "vm_name",
        "image",
        "profile",
        "kcli_params",
    )
    template_fields_renderers = {"kcli_params": "json"}

    def __init__(
        self,
        *,
        vm_name: str,
        image: str | None = None,
        profile: str | None = None,
        kcli_params: Mapping[str, Any] | None = None,
        wait: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.vm_name = vm_name
        self.image = image
        self.profile = profile
        self.kcli_params = dict(kcli_params or {})
        self.wait = wait
        check_kcli_fields(self, ("vm_name", "image", "profile"), "kcli_params")

    def execute_with_hook(self, hook: QubinodeHook, context: Any) -> dict[str, Any]:
        mask_secret_values(self.kcli_params)
        existed = hook.vm_exists(self.vm_name)
        vm = hook.create_vm(
            self.vm_name,
            image=self.image or None,
            profile=self.profile or None,
            params=self.kcli_params,
            wait=self.wait,
        )
        return vm_summary(vm, created=not existed)


class QubinodeDeleteVMOperator(QubinodeBaseOperator):
    """
    Delete a VM (``kcli delete vm -y NAME``, always the explicit name).

    Made for cleanup: ``missing_ok`` defaults to True, so with ``trigger_rule="all_done"`` it
    succeeds whether or not the VM was ever created. Returns ``{"name", "deleted": bool}``.
    """

    template_fields: Sequence[str] = (*QubinodeBaseOperator.template_fields, "vm_name")

    def __init__(self, *, vm_name: str, missing_ok: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vm_name = vm_name
        self.missing_ok = missing_ok
        check_kcli_fields(self, ("vm_name",))

    def execute_with_hook(self, hook: QubinodeHook, context: Any) -> dict[str, Any]:
        deleted = hook.delete_vm(self.vm_name, missing_ok=self.missing_ok)
        return {"name": self.vm_name, "deleted": deleted}


class QubinodeVMActionOperator(QubinodeBaseOperator):
    """``kcli start|stop|restart vm NAME``; returns the VM's info afterwards."""

    template_fields: Sequence[str] = (*QubinodeBaseOperator.template_fields, "vm_name", "action")

    def __init__(self, *, vm_name: str, action: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if action not in VM_ACTIONS and "{{" not in str(action):
            raise ValueError(f"action must be one of {VM_ACTIONS}, not {action!r}")
        self.vm_name = vm_name
        self.action = action
        check_kcli_fields(self, ("vm_name",))

    def execute_with_hook(self, hook: QubinodeHook, context: Any) -> dict[str, Any]:
        if self.action not in VM_ACTIONS:
            raise ValueError(f"action must be one of {VM_ACTIONS}, not {self.action!r}")
        method = {"start": hook.start_vm, "stop": hook.stop_vm, "restart": hook.restart_vm}[self.action]
        return vm_summary(method(self.vm_name), action=self.action)


class QubinodePlanOperator(QubinodeBaseOperator):
    """
    Create or delete a kcli plan (several VMs from one Jinja-rendered plan file).

    ``action="create"``: ``kcli create plan -f FILE [-P k=v]... PLAN``; kcli skips the plan's VMs
    that exist, so a retry completes a half-built plan. ``action="delete"``: ``kcli delete plan -y``
    (``missing_ok`` defaults to True, for cleanup). Returns the plan's entry (``plan``, ``vms``).

    :param plan_file: plan file *on the host* (templated); or ``url`` (``-u``).
    :param kcli_params: the plan's parameters, each ``-P key=value`` (templated).
    """

    template_fields: Sequence[str] = (
        *QubinodeBaseOperator.template_fields,
        "plan",
        "plan_file",
        "url",
        "kcli_params",
        "paramfile",
    )
    template_fields_renderers = {"kcli_params": "json"}

    def __init__(
        self,
        *,
        plan: str,
        action: str = "create",
        plan_file: str | None = None,
        url: str | None = None,
        kcli_params: Mapping[str, Any] | None = None,
        paramfile: str | None = None,
        missing_ok: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if action not in CRUD_ACTIONS:
            raise ValueError(f"action must be one of {CRUD_ACTIONS}, not {action!r}")
        self.plan = plan
        self.action = action
        self.plan_file = plan_file
        self.url = url
        self.kcli_params = dict(kcli_params or {})
        self.paramfile = paramfile
        self.missing_ok = missing_ok
        check_kcli_fields(self, ("plan", "plan_file", "url", "paramfile"), "kcli_params")

    def execute_with_hook(self, hook: QubinodeHook, context: Any) -> dict[str, Any]:
        if self.action == "delete":
            return {"plan": self.plan, "deleted": hook.delete_plan(self.plan, missing_ok=self.missing_ok)}
        mask_secret_values(self.kcli_params)
        entry = hook.create_plan(
            self.plan,
            file=self.plan_file or None,
            url=self.url or None,
            params=self.kcli_params,
            paramfile=self.paramfile or None,
        )
        return public_entry(entry)


class QubinodeKubeOperator(QubinodeBaseOperator):
    """
    Create (unless it exists) or delete a kcli Kubernetes/OpenShift cluster.

    ``action="create"``: ``kcli create kube KIND [--paramfile F] [-P k=v]... CLUSTER``; returns the
    cluster's ``list kube`` entry (secret-looking keys dropped). The kubeconfig stays on the host
    (``~/.kcli/clusters/<cluster>/auth/kubeconfig``). Put the pull secret in the paramfile (a path
    on the host), not in ``kcli_params``.
    """

    template_fields: Sequence[str] = (
        *QubinodeBaseOperator.template_fields,
        "cluster",
        "kind",
        "kcli_params",
        "paramfile",
    )
    template_fields_renderers = {"kcli_params": "json"}

    def __init__(
        self,
        *,
        cluster: str,
        kind: str = "generic",
        action: str = "create",
        kcli_params: Mapping[str, Any] | None = None,
        paramfile: str | None = None,
        missing_ok: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if action not in CRUD_ACTIONS:
            raise ValueError(f"action must be one of {CRUD_ACTIONS}, not {action!r}")
        self.cluster = cluster
        self.kind = kind
        self.action = action
        self.kcli_params = dict(kcli_params or {})
        self.paramfile = paramfile
        self.missing_ok = missing_ok
        check_kcli_fields(self, ("cluster", "kind", "paramfile"), "kcli_params")

    def execute_with_hook(self, hook: QubinodeHook, context: Any) -> dict[str, Any]:
        if self.action == "delete":
            return {"cluster": self.cluster, "deleted": hook.delete_kube(self.cluster, self.missing_ok)}
        mask_secret_values(self.kcli_params)
        entry = hook.create_kube(
            self.cluster, self.kind, paramfile=self.paramfile or None, params=self.kcli_params
        )
        return public_entry(entry)


class QubinodeDeployComponentOperator(QubinodeBaseOperator):
    """
    Run a kcli-pipelines component script (``<pipelines_dir>/<component>/deploy.sh``) on the host.

    The Qubinode convention: ``ACTION=create|delete``, ``CICD_PIPELINE=true`` and the component's
    variables (``VM_NAME``, ``VM_PROFILE``, ``COMMUNITY_VERSION``, ``TARGET_SERVER``...) in the
    environment. Output streams into the task log; a nonzero exit fails the task with its stderr.
    Returns ``{"component", "action", "returncode"}`` plus, if ``output_lines`` > 0, the last lines
    of stdout as ``output_tail`` (off by default: scripts may print credentials).

    :param env: the script's variables (templated); values of secret-looking names are masked.
    :param base_dir: directory holding the components, overriding the connection's ``pipelines_dir``.
    """

    template_fields: Sequence[str] = (
        *QubinodeBaseOperator.template_fields,
        "component",
        "action",
        "env",
        "script",
        "base_dir",
    )
    template_fields_renderers = {"env": "json"}

    def __init__(
        self,
        *,
        component: str,
        action: str = "create",
        env: Mapping[str, Any] | None = None,
        script: str = "deploy.sh",
        base_dir: str | None = None,
        output_lines: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.component = component
        self.action = action
        self.env = dict(env or {})
        self.script = script
        self.base_dir = base_dir
        self.output_lines = output_lines

    def execute_with_hook(self, hook: QubinodeHook, context: Any) -> dict[str, Any]:
        mask_secret_values(self.env)
        result = hook.run_pipeline_script(
            self.component, self.action, self.env, script=self.script, base_dir=self.base_dir or None
        )
        return _result_summary(result, self.output_lines, component=self.component, action=self.action)


class QubinodeAnsiblePlaybookOperator(QubinodeBaseOperator):
    """
    Run ``ansible-playbook`` on the Qubinode host (never ansible-navigator; Qubinode's DAGs don't).

    Returns ``{"playbook", "returncode", "recap": {host: {"ok", "changed", "failed", ...}}}``.

    :param playbook: path on the host; relative paths resolve in ``cwd`` (default: the
        connection's ``navigator_dir``) (templated).
    :param extra_vars: one JSON ``--extra-vars`` item (templated). Prefer ``vault_password_file``
        and vaulted vars files for secrets; secret-looking keys are masked in logs anyway.
    """

    template_fields: Sequence[str] = (
        *QubinodeBaseOperator.template_fields,
        "playbook",
        "inventory",
        "extra_vars",
        "limit",
        "tags",
        "cwd",
    )
    template_fields_renderers = {"extra_vars": "json"}

    def __init__(
        self,
        *,
        playbook: str,
        inventory: str | None = None,
        extra_vars: Mapping[str, Any] | None = None,
        limit: str | None = None,
        tags: Sequence[str] | None = None,
        vault_password_file: str | None = None,
        check: bool = False,
        cwd: str | None = None,
        ansible_playbook: str = "ansible-playbook",
        output_lines: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.playbook = playbook
        self.inventory = inventory
        self.extra_vars = dict(extra_vars or {})
        self.limit = limit
        self.tags = list(tags) if tags else None
        self.vault_password_file = vault_password_file
        self.check = check
        self.cwd = cwd
        self.ansible_playbook = ansible_playbook
        self.output_lines = output_lines

    def execute_with_hook(self, hook: QubinodeHook, context: Any) -> dict[str, Any]:
        mask_secret_values(self.extra_vars)
        result = hook.run_playbook(
            self.playbook,
            inventory=self.inventory or None,
            extra_vars=self.extra_vars,
            limit=self.limit or None,
            tags=self.tags,
            vault_password_file=self.vault_password_file,
            check=self.check,
            cwd=self.cwd or None,
            ansible_playbook=self.ansible_playbook,
        )
        return _result_summary(
            result, self.output_lines, playbook=self.playbook, recap=parse_ansible_recap(result.stdout)
        )


def _result_summary(result: CommandResult, output_lines: int, **fields: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {**fields, "returncode": result.returncode}
    if output_lines > 0:
        summary["output_tail"] = result.stdout.splitlines()[-output_lines:]
    return summary


__all__ = [
    "QubinodeAnsiblePlaybookOperator",
    "QubinodeBaseOperator",
    "QubinodeCreateVMOperator",
    "QubinodeDeleteVMOperator",
    "QubinodeDeployComponentOperator",
    "QubinodeKubeOperator",
    "QubinodePlanOperator",
    "QubinodeVMActionOperator",
]
