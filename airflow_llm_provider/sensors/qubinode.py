"""QubinodeVMSensor: wait until a kcli VM is up, has an IP, and (optionally) answers on SSH.

Unlike Qubinode's old ``KcliVMStatusSensor`` (which always said "running"), the status comes from
``kcli -o json info vm``. ``mode="reschedule"`` by default (no worker slot between pokes);
``deferrable=True`` hands the whole wait to :class:`~airflow_llm_provider.triggers.qubinode.QubinodeVMTrigger`
in the triggerer. paramiko is imported only when a check runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowException,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

from airflow_llm_provider.operators.qubinode import QubinodeLineageMixin

if TYPE_CHECKING:
    from airflow_llm_provider.hooks.qubinode import QubinodeHook

UP_ALIASES = ("up", "running")


class QubinodeVMSensor(QubinodeLineageMixin, BaseSensorOperator):
    """
    Wait for VM ``vm_name`` to reach ``target_status`` on a Qubinode host (or a kcli cloud client).

    Returns (XCom) ``{"name", "status", "ip", ...}`` from kcli once ready.

    :param vm_name: the VM (templated).
    :param target_status: kcli status to wait for; ``up`` (default) and ``running`` are the same.
    :param require_ip: also wait until kcli reports an IP (DHCP lease / guest agent).
    :param ssh_port_check: also wait until the VM's SSH port accepts TCP connections, checked from
        the hypervisor (through the SSH session; from this machine in local mode). Implies an IP.
    :param ssh_port: the port for ``ssh_port_check`` (default 22).
    :param missing_ok: a VM that does not exist yet is "not ready" (default) rather than an error.
    :param deferrable: wait in the triggerer instead (default ``[operators] default_deferrable``).
    :param qubinode_conn_id: the ``qubinode`` connection (templated); ``kcli_client`` overrides its
        kcli ``-C`` client (templated).
    """

    template_fields: Sequence[str] = ("vm_name", "qubinode_conn_id", "kcli_client", "target_status")
    ui_color = "#fde9d9"
    _lineage_vm: dict[str, Any] | None = None  # the VM once ready (OpenLineage on complete)

    def __init__(
        self,
        *,
        vm_name: str,
        qubinode_conn_id: str = "qubinode_default",
        kcli_client: str | None = None,
        target_status: str = "up",
        require_ip: bool = False,
        ssh_port_check: bool = False,
        ssh_port: int = 22,
        missing_ok: bool = True,
        deferrable: bool | None = None,
        mode: str = "reschedule",
        poke_interval: timedelta | float = 30,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, poke_interval=poke_interval, **kwargs)
        self.vm_name = vm_name
        self.qubinode_conn_id = qubinode_conn_id
        self.kcli_client = kcli_client
        self.target_status = target_status
        self.require_ip = require_ip
        self.ssh_port_check = ssh_port_check
        self.ssh_port = ssh_port
        self.missing_ok = missing_ok
        if deferrable is None:
            deferrable = conf.getboolean("operators", "default_deferrable", fallback=False)
        self.deferrable = deferrable

    def _hook(self) -> QubinodeHook:
        from airflow_llm_provider.hooks.qubinode import QubinodeHook

        return QubinodeHook(qubinode_conn_id=self.qubinode_conn_id, kcli_client=self.kcli_client or None)

    def _check(self) -> tuple[bool, str, dict[str, Any] | None]:
        with self._hook() as hook:
            return hook.check_vm(
                self.vm_name,
                target_status=self.target_status,
                require_ip=self.require_ip,
                ssh_port=self.ssh_port if self.ssh_port_check else None,
                missing_ok=self.missing_ok,
            )

    def poke(self, context: Any) -> PokeReturnValue:
        from airflow_llm_provider.operators.qubinode import vm_summary

        ready, message, vm = self._check()
        self.log.info("%s", message)
        self._lineage_vm = vm_summary(vm) if ready else None
        return PokeReturnValue(is_done=ready, xcom_value=self._lineage_vm)

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        from airflow_llm_provider.operators.qubinode import vm_summary
        from airflow_llm_provider.triggers.qubinode import QubinodeVMTrigger

        ready, message, vm = self._check()  # already there: no need to defer
        self.log.info("%s", message)
        if ready:
            self._lineage_vm = vm_summary(vm)
            return self._lineage_vm
        self.defer(
            trigger=QubinodeVMTrigger(
                vm_name=self.vm_name,
                qubinode_conn_id=self.qubinode_conn_id,
                kcli_client=self.kcli_client or None,
                target_status=self.target_status,
                require_ip=self.require_ip,
                ssh_port=self.ssh_port if self.ssh_port_check else None,
                missing_ok=self.missing_ok,
                poke_interval=float(self.poke_interval),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout)) if self.timeout else None,
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        if not event or event.get("status") != "success":
            message = (event or {}).get("message", "no event")
            raise AirflowException(f"Waiting for VM {self.vm_name!r} failed: {message}")
        self.log.info("%s", event.get("message"))
        self._lineage_vm = dict(event.get("vm") or {})
        return self._lineage_vm
