"""``for_each_row``: Windlass's SQL-native fan-out — one child run per row of a session table.

The table is a session table of the run (``_<phase>``, written by the data tools; see
``tools/session_db.py``). Each row runs either a child cascade (``cascade`` with ``inputs``
templated over ``row``, ``index``, ``total``, ``input``, ``state``, ``outputs``) or a one-phase LLM
cascade (``instructions``, a template over the same variables). Rows are bounded by
``max_map_items``; children share the run's usage, budget and sub-run limits. As in Windlass:
``max_parallel`` at a time, ``on_error`` continue / fail_fast / collect_errors, an optional
``result_table`` holding each row with its result, and the output
``{results, count, total, errors, _route}``; results here are in row order.
"""

from __future__ import annotations

import asyncio
from typing import Any

from airflow_llm_provider.cascades.budget import ends_the_run
from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.results import PhaseFailed
from airflow_llm_provider.cascades.spec import Cascade, Phase


class RowsMixin(RunnerBase):
    """Runs ``for_each_row`` phases."""

    async def _run_row_phase(self, phase: Phase) -> tuple[Any, str | None]:
        from airflow_llm_provider.cascades.tools import session_db

        config = phase.for_each_row
        assert config is not None
        context = self._tool_context(phase.name, deterministic=True)
        most = self.options.limits.max_map_items
        try:
            await asyncio.to_thread(session_db.ensure_output_tables, context)
            columns, raw = await asyncio.to_thread(
                session_db.query, context, f"SELECT * FROM {session_db.quote(config.table)}", most + 1
            )
        except Exception as err:  # a missing table: Windlass answers with an error route
            output: dict[str, Any] = {
                "_route": "error",
                "error": f"Failed to read table {config.table}: {err}",
                "results": [],
                "count": 0,
                "total": 0,
            }
            return output, self._route_of(phase, output)
        if len(raw) > most:
            raise PhaseFailed(
                phase.name,
                f"for_each_row: table {config.table} has more than {most} rows ([llm_provider] "
                "max_map_items); filter it first",
            )
        rows = [dict(zip(columns, values, strict=True)) for values in raw]
        total = len(rows)
        self._emit(f"phase {phase.name}: for_each_row over {config.table}: {total} rows")
        slots = asyncio.Semaphore(config.max_parallel)
        results: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        stop = asyncio.Event()

        async def one(index: int, row: dict[str, Any]) -> None:
            async with slots:
                if stop.is_set():
                    return
                variables = {"row": row, "index": index, "total": total}
                try:
                    result = await self._row_child(phase, variables)
                except Exception as err:
                    if ends_the_run(err):
                        raise
                    failures.append({"index": index, "row": row, "error": str(err)})
                    if config.on_error == "fail_fast":
                        stop.set()
                    return
                results.append({"index": index, "row": row, "result": result})

        await asyncio.gather(*(one(index, row) for index, row in enumerate(rows)))
        results.sort(key=lambda entry: entry["index"])
        failures.sort(key=lambda entry: entry["index"])
        if config.on_error == "fail_fast" and failures:
            first = failures[0]
            raise PhaseFailed(phase.name, f"for_each_row: row {first['index']} failed: {first['error']}")
        if config.result_table and results:
            await asyncio.to_thread(_store_results, context, config.result_table, results)
        self._emit(f"phase {phase.name}: for_each_row: {len(results)} of {total} rows done")
        output = {
            "results": [entry["result"] for entry in results],
            "count": len(results),
            "total": total,
            "errors": failures if config.on_error == "collect_errors" else None,
            "_route": "success" if results or not total else "error",
        }
        return output, self._route_of(phase, output)

    async def _row_child(self, phase: Phase, variables: dict[str, Any]) -> Any:
        config = phase.for_each_row
        assert config is not None
        if config.cascade is not None:
            inputs = {
                key: self._render_value(value, variables) for key, value in (config.inputs or {}).items()
            }
            return await self._run_child(config.cascade, inputs)
        # The instructions stay a template of the child (rendered there with the row variables),
        # so text inside a row is data, never template code.
        child = Cascade.model_validate(
            {
                "cascade_id": f"{self.cascade.cascade_id}_{phase.name}_row",
                "phases": [{"name": f"{phase.name}_row", "instructions": config.instructions}],
            }
        )
        return await self._run_child(child, dict(self._input), self._outputs, self._state, variables)


def _store_results(context: Any, table: str, results: list[dict[str, Any]]) -> None:
    """``result_table``: each row with ``_index`` and its result (a dict's keys as ``result_<key>``)."""
    from airflow_llm_provider.cascades.tools import session_db

    rows = []
    for entry in results:
        row = {"_index": entry["index"], **entry["row"]}
        result = entry["result"]
        if isinstance(result, dict):
            row.update({f"result_{key}": value for key, value in result.items() if key not in row})
        else:
            row["result"] = result
        rows.append(row)
    session_db.create_table(context, table, rows)
