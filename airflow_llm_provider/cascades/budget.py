"""The budget guard: a run's ``budget:`` (and the shared budgets' remainder) checked before each
model request, so a budget is enforced *before* money is spent rather than noticed afterwards.

Each request reserves its worst case (an upper bound of its prompt plus the output cap sent with
it) in the run's :class:`~airflow_llm_provider.cascades.usage.UsageTracker` while it is in flight,
so parallel requests cannot together spend past a limit; the cap comes from what the budget has
left. Pure Python, like the rest of the engine.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from airflow_llm_provider.cascades.usage import (
    ModelPrice,
    Reservation,
    SharedRemainder,
    UsageTotals,
    UsageTracker,
    price_call,
)

if TYPE_CHECKING:
    from airflow_llm_provider.cascades.spec import Budget

DEFAULT_OUTPUT_ESTIMATE = 256
"""Output tokens assumed for a call when no ``max_output_tokens`` is given and nothing ran yet."""

DEFAULT_OUTPUT_CAP = 4096
"""The output cap a budgeted request gets when its settings name none and the budget leaves more.
A cap must always be sent under a budget (else one reply can spend anything), and it must not be
larger than every model accepts: OpenAI answers 400 to a ``max_tokens`` above the model's maximum,
and 4096 is the smallest such maximum among current chat models. A request's own ``max_tokens``
setting replaces it (the budget can only lower that)."""


class BudgetExceeded(RuntimeError):
    """Raised BEFORE a call that would exceed the budget.

    Retrying cannot help (the same call would exceed the same budget), so the runner must fail the
    task without Airflow retries; the message says so for whoever reads the task log.

    For a shared budget (``scope`` set), ``maximum`` is what it had left at the latest ledger sum
    and ``spent`` what this task's requests hold on top of that.
    """

    def __init__(
        self,
        *,
        limit: str,
        maximum: float,
        spent: float,
        estimate: float,
        phase: str,
        scope: str | None = None,
    ) -> None:
        self.limit = limit
        self.maximum = maximum
        self.spent = spent
        self.estimate = estimate
        self.phase = phase
        self.scope = scope
        if limit == "max_cost_usd":
            amounts = f"spent ${spent:.6f} so far, this call is estimated at ${estimate:.6f}"
            shown_max = f"${maximum:g}"
        else:
            amounts = f"spent {int(spent)} tokens so far, this call is estimated at {int(estimate)} tokens"
            shown_max = f"{int(maximum)}"
        if scope is not None:
            amounts = amounts.replace("spent", f"{shown_max} left at the last ledger sum, this task holds", 1)
            what = f"Shared LLM budget {limit} for {scope}"
        else:
            what = f"Cascade budget {limit}={shown_max}"
        super().__init__(
            f"{what} would be exceeded by phase {phase!r}: {amounts}. "
            "The call was not made; a budget error is not retried (raise the budget to continue)."
        )


class BudgetGuard:
    """Checks a run's spending against its ``budget:`` (and the shared budgets' remainder) before
    each model request, and sizes the request's output cap to what is left."""

    def __init__(
        self,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
        tracker: UsageTracker | None = None,
    ) -> None:
        if max_tokens is not None and max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
        if max_cost_usd is not None and max_cost_usd <= 0:
            raise ValueError(f"max_cost_usd must be > 0, got {max_cost_usd}")
        self.max_tokens = max_tokens
        self.max_cost_usd = max_cost_usd
        self.tracker = tracker if tracker is not None else UsageTracker()

    @classmethod
    def from_budget(cls, budget: Budget | None, tracker: UsageTracker) -> BudgetGuard:
        """The guard for a cascade's ``budget:`` (``None``: unlimited)."""
        if budget is None:
            return cls(tracker=tracker)
        return cls(max_tokens=budget.max_tokens, max_cost_usd=budget.max_cost_usd, tracker=tracker)

    @property
    def unlimited(self) -> bool:
        return self.max_tokens is None and self.max_cost_usd is None

    def check_before_call(
        self,
        phase: str,
        *,
        model: str,
        estimated_input_tokens: int,
        max_output_tokens: int | None = None,
        declared: ModelPrice | None = None,
    ) -> None:
        """Raise BudgetExceeded if spent + this call's estimate would exceed a limit (nothing is
        reserved: the engine itself reserves per request, see :class:`CallAccount`).

        The output estimate is ``max_output_tokens`` when the call caps it, else the mean output of
        the calls so far (or 256 before any). An unpriceable model cannot exceed ``max_cost_usd``
        but its tokens still count against ``max_tokens``.
        """
        if self.unlimited:
            return
        totals, held_tokens, held_cost, average = self.tracker._snapshot()
        needed = max_output_tokens if max_output_tokens is not None else average or DEFAULT_OUTPUT_ESTIMATE
        input_estimate = max(0, estimated_input_tokens)
        outcome = self.plan(
            phase,
            model=model,
            input_estimate=input_estimate,
            input_bound=input_estimate,
            needed=needed,
            ceiling=max(needed, 1),
            declared=declared,
            totals=totals,
            held_tokens=held_tokens,
            held_cost=held_cost,
        )
        if isinstance(outcome, BudgetExceeded):
            raise outcome

    def plan(
        self,
        phase: str,
        *,
        model: str,
        input_estimate: int,
        input_bound: int,
        needed: int,
        ceiling: int,
        declared: ModelPrice | None,
        totals: UsageTotals,
        held_tokens: int,
        held_cost: float,
        shared: SharedRemainder | None = None,
    ) -> Reservation | BudgetExceeded:
        """The one budget rule: a request may go when every limit, after what is spent and held,
        still has room for its input estimate plus ``needed`` output tokens (the output a reply is
        expected to need). Its output cap is the smallest room left (at most ``ceiling``), and it
        holds an upper bound of its prompt (``input_bound``) plus that cap.

        Using the estimate (not the bound) for the cap keeps calls near the limit useful; the price
        is that one request may overshoot by what its prompt really costs beyond the estimate.
        Only one such request can be in flight: its reservation covers all that was left.
        """
        cap: float = ceiling
        limited = False
        unit = _unit_prices(model, declared)
        input_cost = price_call(model, input_estimate, 0, declared=declared) if unit else None
        needed_cost = price_call(model, input_estimate, needed, declared=declared) if unit else None
        pools: list[tuple[str, str | None, float | None, float | None, float]] = []
        # (limit, scope, maximum, spent, left) for every limit that applies.
        if self.max_tokens is not None:
            spent = totals.total_tokens + held_tokens
            pools.append(("max_tokens", None, self.max_tokens, spent, self.max_tokens - spent))
        if self.max_cost_usd is not None:
            spent_cost = totals.cost_usd + held_cost
            left_cost = self.max_cost_usd - spent_cost
            pools.append(("max_cost_usd", None, self.max_cost_usd, spent_cost, left_cost))
        if shared is not None and shared.tokens is not None:
            left_tokens = shared.tokens - held_tokens
            pools.append(("max_tokens", shared.scope, shared.tokens, held_tokens, left_tokens))
        if shared is not None and shared.cost_usd is not None:
            left = shared.cost_usd - held_cost
            pools.append(("max_cost_usd", shared.scope, shared.cost_usd, held_cost, left))
        for limit, scope, maximum, spent_so_far, left in pools:
            limited = True
            if limit == "max_tokens":
                estimate: float = input_estimate + needed
                fits = left > 0 and left - estimate >= 0
                room: float = left - input_estimate
            else:
                estimate = needed_cost or 0.0
                fits = left > 0 and (needed_cost is None or needed_cost <= left)
                room = math.inf
                if unit is not None and unit[1] > 0 and input_cost is not None:
                    room = math.floor((left - input_cost) / unit[1])
            if not fits:
                return BudgetExceeded(
                    limit=limit,
                    maximum=maximum or 0.0,
                    spent=spent_so_far or 0.0,
                    estimate=estimate,
                    phase=phase,
                    scope=scope,
                )
            cap = min(cap, room)
        if not limited:
            return Reservation(tokens=0, cost_usd=0.0, output_cap=None)
        output_cap = max(1, int(cap))
        cost = price_call(model, input_bound, output_cap, declared=declared) if unit else None
        return Reservation(tokens=input_bound + output_cap, cost_usd=cost or 0.0, output_cap=output_cap)

    def remaining(self) -> dict[str, float | None]:
        """What is left of each limit (never negative); ``None`` for a limit that is not set.
        Requests in flight count as spent at their reservation."""
        totals = self.tracker.totals()
        held_tokens, held_cost = self.tracker.held()
        spent_tokens, spent_cost = totals.total_tokens + held_tokens, totals.cost_usd + held_cost
        tokens = None if self.max_tokens is None else max(0, self.max_tokens - spent_tokens)
        cost = None if self.max_cost_usd is None else max(0.0, round(self.max_cost_usd - spent_cost, 9))
        return {"tokens": tokens, "cost_usd": cost}


def _unit_prices(model: str, declared: ModelPrice | None) -> tuple[float, float] | None:
    """USD per input and per output token, ``None`` when the model has no known price. Taken at a
    million tokens: with tiered prices that is the dearer tier, so a cap sized by it is safe."""
    per_input = price_call(model, 1_000_000, 0, declared=declared)
    per_output = price_call(model, 0, 1_000_000, declared=declared)
    if per_input is None or per_output is None:
        return None
    return per_input / 1_000_000, per_output / 1_000_000


class CallAccount:
    """One LLM call (an agent run: one or more model requests) as the budget sees it.

    Each request reserves its worst case before it goes out (waiting while the requests in flight
    leave no room) and settles with the usage the server reported; the call's record then releases
    what its requests held. A request that fails or is cancelled releases its reservation.
    """

    def __init__(
        self,
        guard: BudgetGuard,
        phase: str,
        model: str,
        *,
        declared: ModelPrice | None = None,
        shared: Callable[[], SharedRemainder | None] | None = None,
        minimum_input_estimate: int = 0,
    ) -> None:
        self.guard = guard
        self.phase = phase
        self.model = model
        self.declared = declared
        self._shared = shared
        self._minimum_input_estimate = max(0, minimum_input_estimate)
        self.requests = 0
        self.replayed = 0
        """Requests answered from the run's response journal (paid before a resume, not now)."""
        self.input_tokens = 0
        self.output_tokens = 0
        self._held_tokens = 0
        self._held_cost = 0.0

    @property
    def held(self) -> tuple[int, float]:
        """The real usage of the requests that answered (what the call's record releases)."""
        return self._held_tokens, self._held_cost

    async def reserve(
        self, *, input_estimate: int, input_bound: int, requested_cap: int | None
    ) -> Reservation:
        """Hold a request's worst case; raises BudgetExceeded when it cannot fit even with nothing
        else in flight. ``requested_cap``: the request's own ``max_tokens`` setting, if any."""
        if self.requests == 0:  # the caller's estimate of the whole call is a floor for its first request
            input_estimate = max(input_estimate, self._minimum_input_estimate)
            input_bound = max(input_bound, input_estimate)
        ceiling = requested_cap if requested_cap is not None and requested_cap > 0 else DEFAULT_OUTPUT_CAP
        while True:
            plan = functools.partial(
                self._plan,
                input_estimate=input_estimate,
                input_bound=input_bound,
                ceiling=ceiling,
                shared=self._shared() if self._shared is not None else None,
            )
            outcome = self.guard.tracker._hold(plan)
            if isinstance(outcome, Reservation):
                return outcome
            await outcome

    def _plan(
        self,
        totals: UsageTotals,
        held_tokens: int,
        held_cost: float,
        average: int | None,
        *,
        input_estimate: int,
        input_bound: int,
        ceiling: int,
        shared: SharedRemainder | None,
    ) -> Reservation | BudgetExceeded:
        return self.guard.plan(
            self.phase,
            model=self.model,
            input_estimate=input_estimate,
            input_bound=input_bound,
            needed=min(ceiling, average or DEFAULT_OUTPUT_ESTIMATE),
            ceiling=ceiling,
            declared=self.declared,
            totals=totals,
            held_tokens=held_tokens,
            held_cost=held_cost,
            shared=shared,
        )

    def settle(self, reservation: Reservation, input_tokens: int, output_tokens: int) -> None:
        """The request answered with this usage (what the server reported, capped or not)."""
        cost = price_call(self.model, input_tokens, output_tokens, declared=self.declared) or 0.0
        self.requests += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self._held_tokens += input_tokens + output_tokens
        self._held_cost += cost
        self.guard.tracker._settle(reservation, input_tokens + output_tokens, cost)

    def release(self, reservation: Reservation) -> None:
        """The request failed or was cancelled before answering."""
        self.guard.tracker._release(reservation)


def ends_the_run(error: BaseException) -> bool:
    """Spending and resource limits end the whole run: never a tool's, an item's or a child's
    failure to retry, absorb or route around."""
    from airflow_llm_provider.cascades.limits import limit_in

    return isinstance(error, BudgetExceeded) or limit_in(error) is not None
