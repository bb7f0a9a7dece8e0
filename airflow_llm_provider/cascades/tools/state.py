"""The state family of built-in tools: Windlass's ``set_state(key, value)``.

``set_state`` writes one key of the run's state, which later phases read as ``{{ state.key }}``
(and ``context.from: [{phase, include: [state]}]`` shows per phase). It is offered to the model
through ``tackle: [set_state]`` (tackle.py) and called by a deterministic phase as
``tool: set_state`` with ``inputs: {key, value}`` (tool_phase.py resolves it through tackle.py).

Like Windlass, the value is stored as given (any JSON value, although the declared type is text)
and the tool answers ``State updated: <key> = <value>``. Windlass also appends each write to a
ClickHouse table it never reads back; there is no such table here.

An LLM phase whose answer is stored in the phase cache must leave the same state when a retried
task answers it from the cache without calling the model: :func:`recording_state_writes` collects
the writes made while the phase runs, the cache entry carries them, and a hit puts them back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from airflow_llm_provider.cascades.tools.builtin import BuiltinTool

SET_STATE = "set_state"

_DESCRIPTION = (
    "Save a value in the run's state under a key, so that later phases can use it "
    "(their prompts read it as state.<key>). Use it to hand findings or decisions forward."
)
_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "key": {"type": "string", "description": "Name of the state entry."},
        "value": {"type": "string", "description": "Value to keep under that name."},
    },
    "required": ["key", "value"],
}

# (the state dict being recorded, the writes made to it): a contextvar, so phases running in
# parallel (data flow, map_over items) each record only their own writes, and a sub-cascade's
# writes to its own state are not taken for its parent phase's.
_recording: ContextVar[tuple[dict[str, Any], dict[str, Any]] | None] = ContextVar(
    "airflow_llm_state_writes", default=None
)


@contextlib.contextmanager
def recording_state_writes(state: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Collect, in the yielded dict, what the state tools write into ``state`` in this context."""
    writes: dict[str, Any] = {}
    token = _recording.set((state, writes))
    try:
        yield writes
    finally:
        _recording.reset(token)


def set_state_function(state: dict[str, Any]) -> Callable[..., Any]:
    """``set_state(key, value)`` writing into ``state`` (the run's ``_state``)."""

    async def set_state(key: str, value: Any) -> str:
        """Save ``value`` under ``key`` in the run's state."""
        state[key] = value
        recording = _recording.get()
        if recording is not None and recording[0] is state:
            recording[1][key] = value
        return f"State updated: {key} = {value}"

    return set_state


TOOLS = (
    BuiltinTool(
        SET_STATE,
        make=lambda context: set_state_function(context.state),
        description=_DESCRIPTION,
        json_schema=_SCHEMA,
    ),
)
"""The state family (``builtin.py``). The schema declares ``value`` as text, as Windlass's
signature does, but a number or object the model sends is kept as it is (arguments are not
coerced to the schema)."""
