"""The cascade engine: runs a validated :class:`Cascade` in-process, asynchronously.

No Airflow here. The Airflow adapters (operator, CLI) hand in what depends on Airflow: how to get a
pydantic-ai model for a model string (the ``pydanticai`` connection), the registered tools, and the
run's template variables (``ds``, ``params``...).

Control flow follows the cascade: when any phase has handoffs, routing or ``on_error`` the phases
form a state machine walked from ``phases[0]`` (with a visit limit); otherwise they form a data-flow
graph and every phase starts as soon as the phases it reads have finished, up to
``max_concurrency`` at a time.

The engine lives in :mod:`airflow_llm_provider.cascades.run`, one module per concern (``core``,
``flow``, ``tool_phase``, ``llm_phase``, ``soundings``, ``rules``, ``context``, ``tackle``); this
module assembles :class:`CascadeRunner` from them and is the public surface.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from airflow_llm_provider.cascades.run.context import ContextMixin
from airflow_llm_provider.cascades.run.core import DEFAULT_MODEL
from airflow_llm_provider.cascades.run.flow import FlowMixin
from airflow_llm_provider.cascades.run.human_steps import HumanStepsMixin
from airflow_llm_provider.cascades.run.llm_phase import LlmPhaseMixin
from airflow_llm_provider.cascades.run.results import (
    CascadeResult,
    ModelFactory,
    PhaseFailed,
    PhaseOutcome,
    PhaseRun,
    RunOptions,
    RunRecord,
)
from airflow_llm_provider.cascades.run.rows import RowsMixin
from airflow_llm_provider.cascades.run.rules import RulesMixin
from airflow_llm_provider.cascades.run.soundings import MUTATIONS, SoundingsMixin
from airflow_llm_provider.cascades.run.tackle import TackleMixin
from airflow_llm_provider.cascades.run.tool_phase import (
    CASCADE_PREFIX,
    MAX_CASCADE_DEPTH,
    SQL_PREFIX,
    SQL_TOOL_ARGUMENTS,
    ToolPhaseMixin,
)
from airflow_llm_provider.cascades.spec import Cascade

T = TypeVar("T")

__all__ = [
    "CASCADE_PREFIX",
    "DEFAULT_MODEL",
    "MAX_CASCADE_DEPTH",
    "MUTATIONS",
    "SQL_PREFIX",
    "SQL_TOOL_ARGUMENTS",
    "CascadeResult",
    "CascadeRunner",
    "ModelFactory",
    "PhaseFailed",
    "PhaseOutcome",
    "PhaseRun",
    "RunOptions",
    "RunRecord",
    "judge_soundings",
    "run_cascade",
    "run_phase",
    "run_sounding",
]


class CascadeRunner(
    FlowMixin,
    ToolPhaseMixin,
    RowsMixin,
    LlmPhaseMixin,
    HumanStepsMixin,
    SoundingsMixin,
    RulesMixin,
    ContextMixin,
    TackleMixin,
):
    """Runs one cascade (or one phase of it): the concerns of :mod:`airflow_llm_provider.cascades.run`
    over the shared state of :class:`~airflow_llm_provider.cascades.run.core.RunnerCore`."""


def run_cascade(
    cascade: Cascade, inputs: Mapping[str, Any] | None = None, options: RunOptions | None = None
) -> CascadeResult:
    """Run ``cascade`` to completion from synchronous code (a new event loop)."""
    return _run_closing(CascadeRunner(cascade, options), lambda runner: runner.run(inputs or {}))


def run_phase(
    cascade: Cascade,
    phase: str,
    inputs: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    options: RunOptions | None = None,
    *,
    item: Any = None,
    item_index: int | None = None,
    state: Mapping[str, Any] | None = None,
) -> PhaseOutcome:
    """Run one phase given the outputs of the phases before it (e.g. pulled from XCom) and the
    run's ``state`` so far (the upstream outcomes' ``state``).

    With ``item``/``item_index`` it runs one element of a ``map_over`` phase. Raises
    :class:`PhaseFailed` or :class:`BudgetExceeded`.
    """
    return _run_closing(
        CascadeRunner(cascade, options),
        lambda runner: runner.run_one(
            phase, inputs or {}, outputs or {}, item=item, item_index=item_index, state=state
        ),
    )


def run_sounding(
    cascade: Cascade,
    phase: str,
    index: int,
    inputs: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    options: RunOptions | None = None,
    state: Mapping[str, Any] | None = None,
) -> PhaseOutcome:
    """Run sounding ``index`` (0-based) of an LLM phase with soundings, alone: the phase's prompt
    (with ``mutate``, the engine's hint for that index), the model ``soundings.models`` gives that
    index (round robin), and the phase's pre wards, attempts and post wards. The outcome's
    ``route`` is the route the model chose, if any. Raises :class:`PhaseFailed` or
    :class:`BudgetExceeded`. :func:`judge_soundings` turns the attempts into the phase result."""
    return _run_closing(
        CascadeRunner(cascade, options),
        lambda runner: runner.run_sounding(phase, index, inputs or {}, outputs or {}, state),
    )


def judge_soundings(
    cascade: Cascade,
    phase: str,
    candidates: Sequence[tuple[int, Any, str | None]],
    inputs: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    options: RunOptions | None = None,
    state: Mapping[str, Any] | None = None,
) -> PhaseOutcome:
    """The result of a phase whose soundings ran apart (:func:`run_sounding`): ``candidates`` are
    the successful ones as ``(index, output, route)``. As in the engine: a single candidate wins
    alone, else the evaluator picks one (``mode: aggregate``: the aggregator merges them). The
    usage is that of the evaluator/aggregator call only. No candidate: :class:`PhaseFailed`."""
    return _run_closing(
        CascadeRunner(cascade, options),
        lambda runner: runner.judge_soundings(phase, candidates, inputs or {}, outputs or {}, state),
    )


def _run_closing(runner: CascadeRunner, start: Callable[[CascadeRunner], Awaitable[T]]) -> T:
    """Run ``start(runner)`` on a new event loop; the run's session folders go afterwards."""

    async def main() -> T:
        return await start(runner)

    try:
        return asyncio.run(main())
    finally:
        runner.close_sessions()
