"""Signals between running workflows, engine side: Windlass's ``await_signal``/``fire_signal``.

A phase waits for a named signal that something else fires with a payload (another cascade,
another DAG, the REST API). Windlass keeps one ClickHouse row per waiter and blocks a thread until
the row is fired, polling every 5 s (``W/signals.py``). Here the engine asks a :class:`SignalBus`
the host lends it (``ToolServices.signals``):

- :class:`LocalSignalBus`, the default (``airflow-llm run``, tests): waiters and firers in the same
  process; a wait blocks a thread, the run's other phases go on.
- The Airflow operators' bus (``operators/cascade_signals.py``): one Airflow Variable per waiter.
  The wait does not block a worker: ``await_signal`` asks the run's human channel with a
  ``kind="signal"`` request, which raises ``HumanInputNeeded``, and the task defers to a trigger
  that polls the waiter's Variable (``triggers/signal.py``).

No Airflow import here.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_llm_provider.cascades.human import HumanAnswer, HumanRequest

DEFAULT_TIMEOUT = "1h"
"""Windlass's ``await_signal`` default."""
POLL_SECONDS = 5.0
"""How often a waiter looks for its signal (Windlass polls its database every 5 s)."""
LIST_LIMIT = 100
"""``list_signals`` returns at most this many waiters, newest first (Windlass's query limit)."""
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_timeout(value: Any) -> float:
    """Seconds to wait for ``await_signal(timeout=...)``, as Windlass reads it: ``<int><s|m|h|d>``
    (``"30s"``, ``"5m"``, ``"4h"``, ``"1d"``); anything else, and no value, is one hour. A number
    (which Windlass rejects) is taken as seconds."""
    if isinstance(value, bool):
        return 3600.0
    if isinstance(value, int | float):
        return float(value)
    text = str(value or "")
    if not text:
        return 3600.0
    try:
        amount = int(text[:-1])
    except ValueError:
        return 3600.0
    unit = _UNITS.get(text[-1].lower())
    return float(amount * unit) if unit else 3600.0


def check_name(signal_name: Any) -> str:
    """The signal name, or ValueError: letters, digits, ``_``, ``.``, ``-`` (1 to 128), because on
    Airflow the name is part of a Variable key that the REST API addresses in a URL path."""
    name = str(signal_name or "")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"signal name {name[:140]!r} is not allowed: use 1 to 128 letters, digits, '_', '.' or '-'"
        )
    return name


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SignalBus(Protocol):
    """Where signals are waited for and fired."""

    waits_in_process: bool
    """True: :meth:`wait` blocks until the signal comes. False: the host's human channel takes
    the ``kind="signal"`` request (the Airflow operators defer the task)."""

    def wait(self, request: HumanRequest, session_id: str) -> HumanAnswer:
        """Block until the signal ``request.question`` is fired for this waiter (the payload as JSON
        in ``text``) or ``request.timeout_seconds`` pass (``timed_out``)."""
        ...

    def fire(self, signal_name: str, payload: Any, session_id: str | None, source: str) -> int:
        """Fire the signal for every current waiter (of ``session_id`` only, when given); the
        number of waiters fired. Nobody waiting: 0, and the signal is lost (no latch)."""
        ...

    def waiting(self, signal_name: str | None = None) -> list[dict[str, Any]]:
        """The current waiters (of ``signal_name``, or all), newest first, as Windlass lists them."""
        ...


@dataclass
class _Waiter:
    record: dict[str, Any]
    event: threading.Event = field(default_factory=threading.Event)
    payload: Any = None


def waiting_record(
    request: HumanRequest, session_id: str, signal_id: str, now: dt.datetime
) -> dict[str, Any]:
    """One waiter, as Windlass's ``signals`` row: what ``list_signals`` shows and a fire rewrites.
    ``request.question`` is the signal's name; no timeout given means Windlass's 1 h."""
    timeout = max(0.0, float(request.timeout_seconds if request.timeout_seconds is not None else 3600.0))
    return {
        "signal_id": signal_id,
        "signal_name": request.question,
        "status": "waiting",
        "session_id": session_id,
        "cascade_id": request.cascade_id,
        "phase_name": request.phase,
        "description": request.context or None,
        "created_at": now.isoformat(),
        "timeout_at": (now + dt.timedelta(seconds=timeout)).isoformat(),
    }


class LocalSignalBus:
    """Waiters and firers in this process (``airflow-llm run``: phases and child cascades of the
    run, or several runs in one Python process). A signal from another process never arrives."""

    waits_in_process = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, _Waiter] = {}

    def wait(self, request: HumanRequest, session_id: str) -> HumanAnswer:
        import json

        now = utc_now()
        waiter = _Waiter(waiting_record(request, session_id, f"sig_{uuid.uuid4().hex[:12]}", now))
        timeout = (dt.datetime.fromisoformat(waiter.record["timeout_at"]) - now).total_seconds()
        signal_id = waiter.record["signal_id"]
        with self._lock:
            self._waiters[signal_id] = waiter
        try:
            fired = waiter.event.wait(timeout)
        finally:
            with self._lock:
                self._waiters.pop(signal_id, None)
        if not fired:
            return HumanAnswer(timed_out=True)
        return HumanAnswer(text=json.dumps(waiter.payload, default=str))

    def fire(self, signal_name: str, payload: Any, session_id: str | None, source: str) -> int:
        with self._lock:
            woken = [
                w
                for w in self._waiters.values()
                if w.record["signal_name"] == signal_name
                and not w.event.is_set()
                and (not session_id or w.record["session_id"] == session_id)
            ]
            for waiter in woken:
                waiter.payload = payload
                waiter.record.update(status="fired", fired_at=utc_now().isoformat(), source=source)
                waiter.event.set()
        return len(woken)

    def waiting(self, signal_name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            records = [
                dict(w.record)
                for w in self._waiters.values()
                if not w.event.is_set() and (signal_name is None or w.record["signal_name"] == signal_name)
            ]
        records.sort(key=lambda r: r["created_at"], reverse=True)
        return records[:LIST_LIMIT]


_local_bus = LocalSignalBus()


def local_bus() -> LocalSignalBus:
    """The process's bus, used when the host lends none (as Windlass's process-wide manager)."""
    return _local_bus
