"""SignalTrigger: a task waits in the triggerer until its signal is fired or its wait times out.

The waiter is an Airflow Variable (``operators/cascade_signals.py``) that ``fire_signal`` (or a
``PATCH`` through the REST API) rewrites with ``status: fired`` and the payload. The trigger reads
it every ``poll_interval`` seconds (5, as Windlass polls its database) in a worker thread: on
Airflow 3 through the Task SDK, which a trigger may call from a thread (``GetVariable`` is among the
messages the triggerer's supervisor serves), on Airflow 2 through the ORM.

Why a Variable and a polling trigger: an Airflow 3.3 trigger cannot read asset events (only a worker
can), asset events and ``AssetWatcher`` start new DAG runs rather than wake a running task, and the
human-in-the-loop endpoints answer a human's question. A Variable is readable and writable from a
worker, a trigger, the REST API and the CLI, on Airflow 2.11 as on 3.3.

Events: ``{"status": "fired", "payload", "fired_at", "source", "key"}``, ``{"status": "timeout",
"key"}``, ``{"status": "cancelled", "key", "error"}`` (the Variable was deleted: Windlass answers a
cancel as a timeout) or ``{"status": "error", "key", "error"}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

POLL_SECONDS = 5.0


class SignalTrigger(BaseTrigger):
    """Fire when the Variable ``key`` says ``status: fired``, or at ``timeout_at`` (epoch seconds).

    :param max_errors: consecutive failed reads (the API server unreachable) before the wait fails.
    """

    def __init__(
        self,
        key: str,
        signal_name: str,
        timeout_at: float,
        poll_interval: float = POLL_SECONDS,
        max_errors: int = 5,
    ) -> None:
        super().__init__()
        self.key = key
        self.signal_name = signal_name
        self.timeout_at = float(timeout_at)
        self.poll_interval = float(poll_interval)
        self.max_errors = int(max_errors)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "key": self.key,
                "signal_name": self.signal_name,
                "timeout_at": self.timeout_at,
                "poll_interval": self.poll_interval,
                "max_errors": self.max_errors,
            },
        )

    def _event(self, status: str, **fields: Any) -> TriggerEvent:
        return TriggerEvent({"status": status, "key": self.key, **fields})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_llm_provider.operators.cascade_signals import read_variable, write_variable

        errors = 0
        while True:
            try:
                raw = await asyncio.to_thread(read_variable, self.key)
                errors = 0
            except Exception as err:
                errors += 1
                text = f"{type(err).__name__}: {err}"
                if errors >= self.max_errors:
                    yield self._event("error", error=f"reading the Variable {self.key} failed: {text}")
                    return
                self.log.warning("Reading %s failed (%d/%d): %s", self.key, errors, self.max_errors, text)
                await asyncio.sleep(self.poll_interval)
                continue
            if raw is None:
                yield self._event("cancelled", error=f"the Variable {self.key} was deleted")
                return
            record = _record(raw)
            status = record.get("status") if record is not None else None
            if record is None or status not in ("waiting", "fired", "timeout"):
                yield self._event(
                    "error",
                    error=f"the Variable {self.key} holds {raw[:200]!r}; a fired signal is the JSON "
                    '{"status": "fired", "payload": ...}',
                )
                return
            if status == "fired":
                self.log.info("Signal %r fired (%s)", self.signal_name, record.get("source"))
                yield self._event(
                    "fired",
                    payload=record.get("payload"),
                    fired_at=record.get("fired_at"),
                    source=record.get("source"),
                )
                return
            remaining = self.timeout_at - time.time()
            if status == "timeout" or remaining <= 0:
                if status != "timeout":  # no longer listed or fired as waiting
                    try:
                        marked = json.dumps({**record, "status": "timeout"})
                        await asyncio.to_thread(write_variable, self.key, marked)
                    except Exception as err:
                        self.log.warning("Could not mark %s timed out: %s", self.key, err)
                self.log.info("Signal %r timed out", self.signal_name)
                yield self._event("timeout")
                return
            await asyncio.sleep(min(self.poll_interval, remaining))


def _record(raw: str) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
