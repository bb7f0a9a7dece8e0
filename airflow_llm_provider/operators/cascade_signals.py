"""A cascade's signals on Airflow: ``await_signal`` defers the task, ``fire_signal`` writes Variables.

Each waiter is one Airflow Variable, ``llm_signal__<signal name>__<signal id>``, holding a JSON
record as Windlass's ``signals`` row: ``signal_id``, ``signal_name``, ``status`` (``waiting``),
``session_id``, ``cascade_id``, ``phase_name``, ``description``, ``created_at``, ``timeout_at``, and
the waiting task instance (``dag_id``, ``run_id``, ``task_id``, ``map_index``).

- Waiting (:func:`defer_for_signal`): the task writes its record and defers to
  :class:`~airflow_llm_provider.triggers.signal.SignalTrigger`, which reads the Variable every 5 s in
  the triggerer (no worker slot is held) until its ``status`` is ``fired`` or the wait's timeout
  passes. The resumed task runs the cascade again: finished phases come from the phase cache, the
  waiting phase replays its paid model replies from the journal, and ``await_signal`` returns the
  payload (:func:`signal_answer_from_event`), which also deletes the record.
- Firing (:func:`fire_signal`, :class:`AirflowSignalBus`): list the Variables of that name, and
  rewrite every ``waiting`` record (of one session, when given) with ``status: fired`` and the
  payload. The REST API fires the same way: ``PATCH /api/v2/variables/<key>`` with the value
  ``{"status": "fired", "payload": ...}``.

A worker and a trigger reach Variables through the Task SDK on Airflow 3 (never the metadata
database) and through the ORM on Airflow 2.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any, NoReturn

from airflow_llm_provider.cascades.human import HumanAnswer, HumanRequest
from airflow_llm_provider.cascades.signals import LIST_LIMIT, check_name, utc_now, waiting_record
from airflow_llm_provider.version_compat import AIRFLOW_V_3_0_PLUS

log = logging.getLogger(__name__)

KEY_PREFIX = "llm_signal__"
GRACE_SECONDS = 600.0
"""A record this long past its ``timeout_at`` belongs to nobody (a task cleared or killed while it
waited, a fire that raced a timeout): fire and list delete it instead of counting it."""
API_SOURCE = "airflow"


# -- Variables, on either Airflow line --------------------------------------------------------
def read_variable(key: str) -> str | None:
    """The Variable's text, or None when there is none."""
    from airflow.providers.common.compat.sdk import Variable

    default: dict[str, Any] = {"default": None} if AIRFLOW_V_3_0_PLUS else {"default_var": None}
    value = Variable.get(key, **default)
    return None if value is None else str(value)


def write_variable(key: str, value: str) -> None:
    from airflow.providers.common.compat.sdk import Variable

    Variable.set(key, value)


def delete_variable(key: str) -> None:
    from airflow.providers.common.compat.sdk import Variable

    Variable.delete(key)


def variable_keys(prefix: str) -> list[str]:
    """Keys of the metadata database's Variables that start with ``prefix`` (secrets backends are
    not listed, as ``Variable.keys`` does not list them)."""
    if AIRFLOW_V_3_0_PLUS:
        from airflow.sdk import Variable

        return [str(key) for key in Variable.keys(prefix=prefix)]
    # Airflow 2: the ORM model (a worker there reads the metadata database).
    import importlib

    from airflow.utils.session import create_session

    model: Any = importlib.import_module("airflow.models.variable").Variable
    with create_session() as session:
        rows = session.query(model.key).filter(model.key.startswith(prefix, autoescape=True))
        return [str(key) for (key,) in rows]


# -- records ---------------------------------------------------------------------------------
def waiter_key(signal_name: str, signal_id: str) -> str:
    return f"{KEY_PREFIX}{signal_name}__{signal_id}"


def _prefix(signal_name: str | None) -> str:
    return f"{KEY_PREFIX}{signal_name}__" if signal_name else KEY_PREFIX


def _parse_time(value: Any) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _records(signal_name: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The signal Variables (of ``signal_name``, or all) and their records; records that belong to
    nobody any more (:data:`GRACE_SECONDS` past their timeout) are deleted on the way."""
    now = utc_now()
    found: list[tuple[str, dict[str, Any]]] = []
    for key in variable_keys(_prefix(signal_name)):
        raw = read_variable(key)
        try:
            record = json.loads(raw) if raw else None
        except ValueError:
            record = None
        if not isinstance(record, dict):
            log.warning("Signal Variable %s holds no JSON object; skipped", key)
            continue
        if signal_name is not None and record.get("signal_name") != signal_name:
            continue  # "a__b" listed under the prefix of "a"
        timeout_at = _parse_time(record.get("timeout_at"))
        if timeout_at is not None and (now - timeout_at).total_seconds() > GRACE_SECONDS:
            try:
                delete_variable(key)
            except Exception as err:  # cleaning is best effort
                log.warning("Could not delete the stale signal Variable %s: %s", key, err)
            continue
        found.append((key, record))
    return found


def fire_signal(
    signal_name: str, payload: Any = None, session_id: str | None = None, source: str = API_SOURCE
) -> int:
    """Fire ``signal_name`` with ``payload`` for every task waiting for it (of ``session_id`` only,
    when given); returns how many were fired. Call it from any task (``@task``, a
    PythonOperator): this is what ``fire_signal`` does in a cascade. Nobody waiting: 0, and the
    signal is lost, as in Windlass."""
    name = check_name(signal_name)
    fired = 0
    for key, record in _records(name):
        if record.get("status") != "waiting":
            continue
        if session_id and record.get("session_id") != session_id:
            continue
        fired_record = {
            **record,
            "status": "fired",
            "payload": payload,
            "fired_at": utc_now().isoformat(),
            "source": source,
        }
        write_variable(key, json.dumps(fired_record, default=str))
        fired += 1
    log.info("Fired the signal %r for %d waiting task(s)", name, fired)
    return fired


def waiting_signals(signal_name: str | None = None) -> list[dict[str, Any]]:
    """The tasks waiting for ``signal_name`` (or any signal) now, newest first, at most 100."""
    name = check_name(signal_name) if signal_name else None
    records = [record for _, record in _records(name) if record.get("status") == "waiting"]
    records.sort(key=lambda record: str(record.get("created_at") or ""), reverse=True)
    return records[:LIST_LIMIT]


class AirflowSignalBus:
    """The engine's ``SignalBus`` (``cascades/signals.py``) over Airflow Variables. It does not wait
    in the worker: the run's human channel raises ``HumanInputNeeded`` and :func:`defer_for_signal`
    defers the task."""

    waits_in_process = False

    def wait(self, request: HumanRequest, session_id: str) -> HumanAnswer:
        raise RuntimeError("on Airflow a signal wait defers the task (defer_for_signal)")

    def fire(self, signal_name: str, payload: Any, session_id: str | None, source: str) -> int:
        return fire_signal(signal_name, payload, session_id, source)

    def waiting(self, signal_name: str | None = None) -> list[dict[str, Any]]:
        return waiting_signals(signal_name)


# -- the waiting task ------------------------------------------------------------------------
def defer_for_signal(task: Any, context: Any, request: HumanRequest, carried: Mapping[str, Any]) -> NoReturn:
    """Register this task instance as a waiter for the signal ``request.question`` and defer it
    to a :class:`SignalTrigger`; it resumes in ``resume_after_human`` with the trigger's event."""
    from airflow_llm_provider.operators.cascade_human import RESUME_METHOD
    from airflow_llm_provider.operators.links import session_id_for
    from airflow_llm_provider.triggers.signal import SignalTrigger

    ti = context["ti"]
    map_index = getattr(ti, "map_index", -1)
    session_id = session_id_for(ti.dag_id, ti.run_id, ti.task_id, map_index)
    # The same question of the same task instance keeps its id: a retried try overwrites its record.
    digest = hashlib.sha256(f"{session_id}|{request.key}".encode()).hexdigest()[:12]
    signal_id = f"sig_{digest}"
    name = check_name(request.question)
    key = waiter_key(name, signal_id)
    now = utc_now()
    record = {
        **waiting_record(request, session_id, signal_id, now),
        "signal_name": name,
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": map_index,
    }
    timeout_at = dt.datetime.fromisoformat(record["timeout_at"])
    write_variable(key, json.dumps(record))
    task.log.info(
        "Waiting for the signal %r until %s (Variable %s, session %s)",
        name,
        timeout_at.isoformat(timespec="seconds"),
        key,
        session_id,
    )
    # No Airflow deferral timeout: it would fail the task, where Windlass's timeout is a result
    # the cascade routes on. The trigger ends the wait at timeout_at itself.
    task.defer(
        trigger=SignalTrigger(key=key, signal_name=name, timeout_at=timeout_at.timestamp()),
        method_name=RESUME_METHOD,
        kwargs={**carried, "pending": request.to_dict()},
        timeout=None,
    )
    raise AssertionError("task.defer() returned")  # pragma: no cover - defer always raises


def signal_answer_from_event(request: HumanRequest, event: Mapping[str, Any]) -> HumanAnswer:
    """The trigger's event as the engine's answer to the wait; the waiter's record is deleted."""
    key = event.get("key")
    if key:
        try:
            delete_variable(str(key))
        except Exception as err:  # the record expires anyway (GRACE_SECONDS)
            log.warning("Could not delete the signal Variable %s: %s", key, err)
    status = event.get("status")
    if status == "fired":
        return HumanAnswer(text=json.dumps(event.get("payload"), default=str))
    if status in ("timeout", "cancelled"):
        return HumanAnswer(timed_out=True)
    raise RuntimeError(f"waiting for the signal '{request.question}' failed: {event.get('error') or event}")
