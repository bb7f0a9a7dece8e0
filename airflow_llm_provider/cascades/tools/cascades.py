"""Built-in tool family: child cascades — Windlass's ``spawn_cascade``, ``map_cascade`` and
``windlass_data``.

Every child runs as a child of the calling run (``ToolContext.run_cascade``): it spends from the
same usage and budget, counts against ``max_sub_cascade_runs`` and the nesting depth, and is
cancelled with the run. Differences from Windlass, each deliberate:

- ``spawn_cascade`` is fire-and-forget as in Windlass, but the run waits for spawned children
  before it ends (as it does for ``async_cascades``): an Airflow task that returned while a child
  still spent money would hide that spending from the ledger.
- ``map_cascade`` returns results **in item order** (Windlass: completion order) and each result
  is ``{index, item, status, output, state, error}`` rather than Windlass's whole session dump.
- ``windlass_data`` runs its inline phase with the run's outputs and state visible, as Windlass
  pre-seeds them.

A child cascade path is relative to the calling cascade's folder, then to the folders above it
(Windlass resolves against its working directory, usually the checkout's root), confined as every
file a cascade names (``trust.py``).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from airflow_llm_provider.cascades.budget import ends_the_run
from airflow_llm_provider.cascades.tools.builtin import BuiltinTool, ToolContext

MAP_MODES = ("aggregate", "first_valid", "all_or_nothing")
MAP_ON_ERROR = ("continue", "fail_fast", "collect_errors")
MAX_PARALLEL = 16
"""Upper bound on ``map_cascade``'s ``max_parallel`` (each item is a whole cascade run)."""
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n([\s\S]*?)\n\s*```")


def _error(message: str) -> dict[str, Any]:
    return {"_route": "error", "error": message}


def _items(map_over: Any) -> list[Any]:
    """Windlass's rule: a list as is; a string is JSON, else split on commas."""
    if isinstance(map_over, list | tuple):
        return list(map_over)
    if isinstance(map_over, str):
        text = map_over.strip()
        try:
            parsed = json.loads(text)
        except ValueError:
            return [part.strip() for part in text.split(",") if part.strip()]
        return parsed if isinstance(parsed, list) else [parsed]
    if map_over is None:
        return []
    return [map_over]


def _as_int(value: Any, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None


def make_map_cascade(context: ToolContext) -> Any:
    async def map_cascade(
        cascade: str,
        map_over: list[Any] | str,
        input_key: str = "item",
        mode: str = "aggregate",
        max_parallel: int = 5,
        on_error: str = "continue",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run the cascade file `cascade` once per element of `map_over` (a list, or a JSON list
        string), each with input {input_key: element}, at most `max_parallel` at a time. `mode`:
        aggregate (all results), first_valid (the first success), all_or_nothing (fail if any
        fails). `on_error`: continue, fail_fast or collect_errors."""
        if mode not in MAP_MODES:
            return _error(f"map_cascade: mode must be one of {', '.join(MAP_MODES)}, got {mode!r}")
        if on_error not in MAP_ON_ERROR:
            return _error(f"map_cascade: on_error must be one of {', '.join(MAP_ON_ERROR)}, got {on_error!r}")
        try:
            parallel = min(MAX_PARALLEL, max(1, _as_int(max_parallel, "max_parallel", 5)))
            seconds = float(timeout) if timeout not in (None, "") else None
        except (TypeError, ValueError) as err:
            return _error(f"map_cascade: {err}")
        items = _items(map_over)
        total = len(items)
        context.emit(
            f"phase {context.phase_name}: map_cascade {cascade}: {total} items, {parallel} at a time"
        )
        slots = asyncio.Semaphore(parallel)
        results: list[dict[str, Any] | None] = [None] * total
        stop = asyncio.Event()

        async def one(index: int, item: Any) -> None:
            async with slots:
                if stop.is_set():
                    results[index] = {"index": index, "item": item, "status": "skipped"}
                    return
                try:
                    output = await context.run_cascade(cascade, {input_key: item})
                except Exception as err:
                    if ends_the_run(err):
                        raise
                    results[index] = {"index": index, "item": item, "status": "failed", "error": str(err)}
                    if on_error == "fail_fast" or mode == "all_or_nothing":
                        stop.set()
                    return
                results[index] = {"index": index, "item": item, "status": "success", "output": output}
                if mode == "first_valid":
                    stop.set()

        tasks = [asyncio.ensure_future(one(index, item)) for index, item in enumerate(items)]
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), seconds)
        except TimeoutError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            done = [r for r in results if r is not None]
            return _error(f"map_cascade: timed out after {seconds:g}s with {len(done)} of {total} items done")
        finished = [r for r in results if r is not None]
        failures = [r for r in finished if r["status"] == "failed"]
        context.emit(
            f"phase {context.phase_name}: map_cascade {cascade}: {total - len(failures)} of {total} succeeded"
        )
        if mode == "first_valid":
            winner = next((r for r in finished if r["status"] == "success"), None)
            if winner is None:
                return {**_error("map_cascade: no item succeeded"), "errors": failures}
            return {
                "result": winner["output"],
                "item": winner["item"],
                "index": winner["index"],
                "_route": "success",
            }
        answer: dict[str, Any] = {"results": finished, "count": total - len(failures), "total": total}
        if on_error == "collect_errors" or failures:
            answer["errors"] = failures
        failed = bool(failures) and (mode == "all_or_nothing" or on_error == "fail_fast")
        answer["_route"] = "error" if failed else "success"
        if failed:
            answer["error"] = f"map_cascade: {len(failures)} of {total} items failed"
        return answer

    return map_cascade


def make_spawn_cascade(context: ToolContext) -> Any:
    async def spawn_cascade(cascade_ref: str, input_data: dict[str, Any] | str | None = None) -> str:
        """Start the cascade file `cascade_ref` in the background with `input_data` and return at
        once; the run waits for it before it ends."""
        given: Any = input_data
        if isinstance(given, str):
            try:
                given = json.loads(given) if given.strip() else {}
            except ValueError:
                return f"Error: input_data is not a JSON object: {given[:80]!r}"
        if given is not None and not isinstance(given, Mapping):
            return "Error: input_data must be an object"
        session_id = f"spawned_{uuid.uuid4().hex[:12]}"

        async def child() -> None:
            try:
                await context.run_cascade(cascade_ref, dict(given or {}))
            except Exception as err:  # fire-and-forget: the caller has moved on
                context.emit(
                    f"phase {context.phase_name}: spawned cascade {cascade_ref} failed (ignored): {err}"
                )
                if ends_the_run(err):
                    raise
                return
            context.emit(f"phase {context.phase_name}: spawned cascade {cascade_ref}: done")

        context.start_background(child())
        return f"Spawned cascade '{cascade_ref}' with Session ID: {session_id}"

    return spawn_cascade


def make_windlass_data(context: ToolContext) -> Any:
    async def windlass_data(phase_yaml: str | None = None, code: str | None = None) -> dict[str, Any]:
        """Run one LLM phase, given as YAML in `phase_yaml` (instructions, model, output_schema
        required, soundings, wards, tackle...), with the run's outputs and state in its templates;
        its structured answer becomes rows (a list of objects) or a result. `code` is the same
        YAML under the name Windlass's notebooks give every cell's body."""
        if phase_yaml is None:
            phase_yaml = code
        elif code is not None:
            return _error("windlass_data: give the phase in `phase_yaml` or `code`, not both")
        if phase_yaml is None:
            return _error(
                "windlass_data: the phase YAML is missing (`phase_yaml`, or `code` as in notebooks)"
            )
        from airflow_llm_provider.cascades.errors import CascadeValidationError
        from airflow_llm_provider.cascades.loader import load_cascade
        from airflow_llm_provider.cascades.parsing import Collector, parse_document

        if not isinstance(phase_yaml, str):
            return _error("windlass_data: phase_yaml must be text (a YAML phase definition)")
        collector = Collector(f"{context.cascade_id}:{context.phase_name}.phase_yaml")
        phase = parse_document(phase_yaml, ".yaml", collector)
        if collector.issues:
            return _error(f"windlass_data: {'; '.join(str(issue) for issue in collector.issues)}")
        if not isinstance(phase, dict) or not phase:
            return _error("windlass_data: phase_yaml must be a mapping (a phase definition)")
        if "output_schema" not in phase:
            return _error(
                "windlass_data: LLM cells require 'output_schema' to return structured data; add one"
            )
        name = context.phase_name or "llm_cell"
        data = {"cascade_id": f"notebook_{name}", "phases": [{**phase, "name": name}]}
        try:
            cascade = load_cascade(data)
        except CascadeValidationError as err:
            return _error(f"windlass_data: {err}")
        try:
            output = await context.run_cascade(
                cascade, dict(context.input), dict(context.outputs), dict(context.state)
            )
        except Exception as err:  # Windlass answers a failed cell with an error route
            if ends_the_run(err):
                raise
            return _error(f"windlass_data: {err}")
        return {**format_result(_unfenced(output)), "_route": "success"}

    return windlass_data


def _unfenced(output: Any) -> Any:
    """A text answer's JSON (inside a ```json fence or not), as Windlass reads LLM cells."""
    if not isinstance(output, str):
        return output
    content = output.strip()
    fence = _FENCE.search(content)
    if fence:
        content = fence.group(1).strip()
    try:
        return json.loads(content)
    except ValueError:
        return output


def format_result(value: Any) -> dict[str, Any]:
    """Windlass's polyglot result shape: a list of objects is a table, anything else a result."""
    if isinstance(value, list) and value and all(isinstance(row, Mapping) for row in value):
        columns = list(dict.fromkeys(key for row in value for key in row))
        return {"rows": value, "columns": columns, "row_count": len(value), "type": "dataframe"}
    kind = {list: "list", dict: "dict", str: "str", int: "int", float: "float", bool: "bool"}
    return {"result": value, "type": kind.get(type(value), type(value).__name__)}


TOOLS = (
    BuiltinTool("map_cascade", make=make_map_cascade),
    BuiltinTool("spawn_cascade", make=make_spawn_cascade),
    BuiltinTool("windlass_data", make=make_windlass_data),
)
