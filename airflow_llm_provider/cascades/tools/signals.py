"""The signals family of built-in tools: Windlass's ``await_signal``, ``fire_signal`` and
``list_signals`` (``W/eddies/signal_tools.py``).

- ``await_signal(signal_name, timeout="1h", description=None)`` waits until the signal is fired
  and returns ``{status: "fired", payload, _route: "fired"}``, or after ``timeout``
  (``<int><s|m|h|d>``, anything else is 1 h) ``{status: "timeout", error, _route: "timeout"}``.
- ``fire_signal(signal_name, payload=None, session_id=None)`` wakes every current waiter (of one
  session when given) and returns ``{status: "success", fired_count, signal_name, _route}`` with
  ``_route`` ``success`` or ``no_waiters``: a signal fired with nobody waiting is lost, as in
  Windlass.
- ``list_signals(signal_name=None)`` returns ``{signals, count}``: the current waiters.

Where signals travel is the host's :class:`~airflow_llm_provider.cascades.signals.SignalBus`
(``ToolServices.signals``; the process's :class:`LocalSignalBus` when none is lent). A host whose
human channel records answers and resumes later (:class:`RecordedAnswers`: the Airflow operators)
gets the wait as a ``kind="signal"`` question, so the task defers instead of blocking a worker.

A resumed run calls its tools again while it replays the model's recorded replies. With such a
host, ``fire_signal`` and ``list_signals`` record their results with the run's answers: the replay
gets the same results (so the next model request matches the recorded one and is not paid again)
and fires nothing twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from airflow_llm_provider.cascades.human import (
    HumanAnswer,
    HumanChannel,
    HumanRequest,
    HumanUnavailable,
    RecordedAnswers,
)
from airflow_llm_provider.cascades.signals import (
    DEFAULT_TIMEOUT,
    SignalBus,
    check_name,
    local_bus,
    parse_timeout,
)
from airflow_llm_provider.cascades.tools.builtin import BuiltinTool, ToolContext

SIGNAL_TOOLS = frozenset({"await_signal", "fire_signal", "list_signals"})
FIRE_SOURCE = "cascade_tool"
"""The ``source`` a fire from a cascade records (Windlass's)."""


def _bus(run: ToolContext) -> SignalBus:
    return run.services.signals or local_bus()


def _scope(run: ToolContext) -> str:
    return f"{run.cascade_id}:{run.phase_name}"


async def _once(
    run: ToolContext, kind: str, name: str, compute: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """``compute()``, or its result recorded with the run's answers before a resume."""
    channel = run.services.human
    answers = channel.answers if isinstance(channel, RecordedAnswers) else None
    key = run.questions.key(_scope(run), kind, name)
    if answers is not None and key in answers and answers[key].text is not None:
        recorded: dict[str, Any] = json.loads(answers[key].text or "{}")
        return recorded
    result = await asyncio.to_thread(compute)
    if answers is not None:
        answers[key] = HumanAnswer(text=json.dumps(result, default=str))
    return result


class _NoHostWaits:
    def ask(self, request: HumanRequest) -> HumanAnswer:
        raise HumanUnavailable(
            f"phase '{request.phase}' waits for the signal '{request.question}', and nothing here can "
            "wait for it: the host lends a signal bus that does not wait in this process, and no "
            "channel to defer the wait through"
        )


def _await_signal(run: ToolContext) -> Callable[..., Any]:
    async def await_signal(
        signal_name: str, timeout: str = DEFAULT_TIMEOUT, description: str | None = None
    ) -> dict[str, Any]:
        """Wait until the named signal is fired (by another cascade, a DAG or the REST API); returns
        its payload, or a timeout after `timeout` (30s, 5m, 4h, 1d)."""
        name = check_name(signal_name)
        request = HumanRequest(
            key=run.questions.key(_scope(run), "signal", name),
            phase=run.phase_name,
            kind="signal",
            question=name,
            context="" if description is None else str(description),
            timeout_seconds=parse_timeout(timeout),
            cascade_id=run.cascade_id,
        )
        bus = _bus(run)
        channel: HumanChannel | None = run.services.human
        run.emit(f"phase {run.phase_name}: waits for the signal '{name}' (timeout {timeout})")
        if isinstance(channel, RecordedAnswers) or not bus.waits_in_process:
            # The host defers the wait (Airflow: a trigger) and resumes the run with the answer.
            answer = await asyncio.to_thread((channel or _NoHostWaits()).ask, request)
        else:  # a thread waits; the run's other phases go on
            answer = await asyncio.to_thread(bus.wait, request, run.session_id)
        if answer.timed_out:
            return {
                "status": "timeout",
                "error": f"Signal '{name}' timed out after {timeout}",
                "_route": "timeout",
            }
        try:
            payload = json.loads(answer.text) if answer.text else None
        except ValueError:
            payload = answer.text
        return {"status": "fired", "payload": payload, "_route": "fired"}

    return await_signal


def _fire_signal(run: ToolContext) -> Callable[..., Any]:
    async def fire_signal(
        signal_name: str, payload: dict[str, Any] | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        """Fire the named signal, waking every cascade waiting for it (only those of `session_id`
        when given) with `payload`; a signal nobody waits for is lost."""
        name = check_name(signal_name)
        bus = _bus(run)

        def fire() -> dict[str, Any]:
            count = bus.fire(name, payload, session_id or None, FIRE_SOURCE)
            return {
                "status": "success",
                "fired_count": count,
                "signal_name": name,
                "_route": "success" if count > 0 else "no_waiters",
            }

        result = await _once(run, "signal_fire", name, fire)
        run.emit(f"phase {run.phase_name}: fired the signal '{name}' ({result['fired_count']} waiting)")
        return result

    return fire_signal


def _list_signals(run: ToolContext) -> Callable[..., Any]:
    async def list_signals(signal_name: str | None = None) -> dict[str, Any]:
        """List the signals cascades are waiting for (only `signal_name` when given)."""
        name = check_name(signal_name) if signal_name else None
        bus = _bus(run)

        def listed() -> dict[str, Any]:
            signals = bus.waiting(name)
            return {"signals": signals, "count": len(signals)}

        return await _once(run, "signal_list", name or "*", listed)

    return list_signals


TOOLS = (
    BuiltinTool(
        "await_signal",
        make=_await_signal,
        description=(
            "Wait until another workflow fires the named signal. Returns {status: 'fired', payload} "
            "or, after `timeout` (e.g. 30s, 5m, 4h, 1d; default 1h), {status: 'timeout', error}."
        ),
    ),
    BuiltinTool(
        "fire_signal",
        make=_fire_signal,
        description=(
            "Fire a named signal with an optional payload, waking the cascades waiting for it "
            "(only those of `session_id` when given). Returns {fired_count}; nobody waiting: "
            "the signal is lost."
        ),
    ),
    BuiltinTool(
        "list_signals",
        make=_list_signals,
        description="List the signals cascades are waiting for now: {signals, count}.",
    ),
)
"""The signals family (``builtin.py``)."""
