"""QubinodeVMTrigger: wait in the triggerer until a kcli VM is up (has an IP, answers on SSH).

How the check runs without blocking the triggerer's event loop: each probe is the hook's own
synchronous ``check_vm`` in a worker thread (``asyncio.to_thread``). We chose that over an asyncssh
reimplementation because the probe must behave exactly as the hook does — same connection
resolution (``ssh_conn_id``, sudo, ``kcli_client``), same host-key verification and error
messages, same JSON parsing — and a probe is one short command every ``poke_interval`` seconds, so a
thread per waiting VM costs little. On Airflow 3 the connection is fetched from that thread, where
the Task SDK's synchronous client is allowed (it is not, inside the event loop).

Module top imports stay cheap (no paramiko): the triggerer and DAG parsing import this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from airflow_llm_provider.hooks.qubinode import QubinodeHook

# Errors no amount of waiting fixes: fail at once. Others (a dropped SSH session, a kcli hiccup)
# are retried up to ``max_errors`` consecutive times.
PERMANENT_ERRORS = (
    "QubinodeConfigError",
    "QubinodeHostKeyError",
    "QubinodeAuthenticationError",
    "KcliNotFoundError",
    "QubinodeVMNotFound",
)


class QubinodeVMTrigger(BaseTrigger):
    """
    Fire once VM ``vm_name`` reaches ``target_status`` (``running`` = ``up``), optionally with an IP
    and an open SSH port (checked from the hypervisor).

    Events: ``{"status": "success", "vm": {...}, "message": ...}`` or
    ``{"status": "error", "message": ...}``.
    """

    def __init__(
        self,
        vm_name: str,
        qubinode_conn_id: str = "qubinode_default",
        kcli_client: str | None = None,
        target_status: str = "up",
        require_ip: bool = False,
        ssh_port: int | None = None,
        missing_ok: bool = True,
        poke_interval: float = 30.0,
        max_errors: int = 3,
    ) -> None:
        super().__init__()
        self.vm_name = vm_name
        self.qubinode_conn_id = qubinode_conn_id
        self.kcli_client = kcli_client
        self.target_status = target_status
        self.require_ip = require_ip
        self.ssh_port = ssh_port
        self.missing_ok = missing_ok
        self.poke_interval = poke_interval
        self.max_errors = max_errors
        self._hook: QubinodeHook | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "vm_name": self.vm_name,
                "qubinode_conn_id": self.qubinode_conn_id,
                "kcli_client": self.kcli_client,
                "target_status": self.target_status,
                "require_ip": self.require_ip,
                "ssh_port": self.ssh_port,
                "missing_ok": self.missing_ok,
                "poke_interval": self.poke_interval,
                "max_errors": self.max_errors,
            },
        )

    def _probe(self) -> tuple[bool, str, dict[str, Any] | None]:
        """One check, in a worker thread: the hook (and its SSH session) is reused between probes."""
        if self._hook is None:
            from airflow_llm_provider.hooks.qubinode import QubinodeHook

            self._hook = QubinodeHook(qubinode_conn_id=self.qubinode_conn_id, kcli_client=self.kcli_client)
        return self._hook.check_vm(
            self.vm_name,
            target_status=self.target_status,
            require_ip=self.require_ip,
            ssh_port=self.ssh_port,
            missing_ok=self.missing_ok,
        )

    def _close(self) -> None:
        if self._hook is not None:
            self._hook.close()
            self._hook = None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_llm_provider.operators.qubinode import vm_summary

        errors = 0
        try:
            while True:
                try:
                    ready, message, vm = await asyncio.to_thread(self._probe)
                    errors = 0
                except Exception as err:
                    errors += 1
                    text = f"{type(err).__name__}: {err}"
                    if type(err).__name__ in PERMANENT_ERRORS or errors >= self.max_errors:
                        yield TriggerEvent({"status": "error", "message": text, "vm_name": self.vm_name})
                        return
                    self.log.warning(
                        "Check of VM %r failed (%d/%d): %s", self.vm_name, errors, self.max_errors, text
                    )
                    await asyncio.to_thread(self._close)  # reconnect on the next probe
                else:
                    if ready:
                        yield TriggerEvent({"status": "success", "message": message, "vm": vm_summary(vm)})
                        return
                    self.log.info("%s; next check in %ss", message, self.poke_interval)
                await asyncio.sleep(self.poke_interval)
        finally:
            await asyncio.to_thread(self._close)
