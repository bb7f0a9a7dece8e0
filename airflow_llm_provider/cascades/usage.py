"""Token and cost accounting for one cascade run, and the budget guard that stops it before a call.

Pure Python: the runner records every LLM call here and asks the guard before each model request,
so a budget is enforced *before* money is spent rather than noticed afterwards. Each request
reserves its worst case (an upper bound of its prompt plus the output cap sent with it) while it is
in flight, so parallel requests cannot together spend past a limit; the cap comes from what the
budget has left. Prices come from the connection's declared ``extra.price`` (self-hosted models)
or from pydantic-ai's price data (``genai_prices``), imported lazily.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

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

# pydantic-ai model prefix -> genai-prices provider id. Prefixes missing here (ollama, test, ...)
# have no public price: such calls are unpriced unless the connection declares one.
_PROVIDER_IDS: dict[str, str] = {
    "openai": "openai",
    "openai-chat": "openai",
    "openai-responses": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "google-gla": "google",
    "google-vertex": "google",
    "gemini": "google",
    "vertexai": "google",
    "groq": "groq",
    "mistral": "mistral",
    "cohere": "cohere",
    "bedrock": "aws",
    "deepseek": "deepseek",
    "grok": "x-ai",
    "xai": "x-ai",
    "x-ai": "x-ai",
    "openrouter": "openrouter",
    "together": "together",
    "fireworks": "fireworks",
    "cerebras": "cerebras",
    "moonshotai": "moonshotai",
    "perplexity": "perplexity",
}


@dataclass(frozen=True)
class ModelPrice:
    """A declared price, for models genai-prices cannot know (self-hosted, fine-tuned, private)."""

    input_per_mtok: float
    output_per_mtok: float

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any] | None) -> ModelPrice | None:
        """``extra["price"]`` of a connection, or ``None`` when it declares none."""
        if not extra or extra.get("price") is None:
            return None
        price = extra["price"]
        expected = '{"input_per_mtok": <USD>, "output_per_mtok": <USD>}'
        if not isinstance(price, Mapping):
            raise ValueError(f"connection extra 'price' must be an object like {expected}, got {price!r}")
        unknown = sorted(set(price) - {"input_per_mtok", "output_per_mtok"})
        if unknown:
            raise ValueError(f"connection extra 'price' has unknown keys {unknown}; expected {expected}")
        values: dict[str, float] = {}
        for name in ("input_per_mtok", "output_per_mtok"):
            value = price.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(
                    f"connection extra 'price.{name}' must be a number (USD per million tokens), "
                    f"got {value!r}; expected {expected}"
                )
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"connection extra 'price.{name}' must be >= 0, got {value!r}")
            values[name] = float(value)
        return cls(**values)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD for the given tokens."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1_000_000


def _split_model(model: str) -> tuple[str | None, str]:
    """``("openai", "gpt-4o-mini")`` for ``"openai-chat:gpt-4o-mini"``; provider ``None`` if unknown."""
    prefix, sep, name = model.partition(":")
    if not sep:
        return None, model
    return _PROVIDER_IDS.get(prefix.strip().lower()), name.strip()


def price_call(
    model: str, input_tokens: int, output_tokens: int, *, declared: ModelPrice | None = None
) -> float | None:
    """USD cost of one call; ``None`` when nobody knows the price (never raises)."""
    if declared is not None:
        return declared.cost(input_tokens, output_tokens)
    provider_id, name = _split_model(model or "")
    if provider_id is None or not name:
        # A bare name ("test", "llama3.2") is not priced: guessing a provider from it could bill a
        # self-hosted model at a cloud price.
        return None
    try:
        import genai_prices

        calculation = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            model_ref=name,
            provider_id=provider_id,
        )
        return float(calculation.total_price)
    except Exception:
        return None


@dataclass(frozen=True)
class CallRecord:
    """One LLM call (or one sounding's call) as the runner saw it."""

    phase: str
    attempt: int
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    cache_hit: bool = False
    sounding: int | None = None
    duration_s: float = 0.0


@dataclass(frozen=True)
class UsageTotals:
    """What a run (or one phase) spent; ``cost_usd`` sums priced calls only."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cache_hits: int = 0
    unpriced_calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (XCom, task log), cost rounded to 6 decimals."""
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "cache_hits": self.cache_hits,
            "unpriced_calls": self.unpriced_calls,
        }

    def plus(self, record: CallRecord) -> UsageTotals:
        """These totals with ``record`` added (a cache hit counts as a hit only: its tokens were
        spent by the run that filled the cache)."""
        if record.cache_hit:
            return self.plus_cache_hit()
        return dataclasses.replace(
            self,
            requests=self.requests + record.requests,
            input_tokens=self.input_tokens + record.input_tokens,
            output_tokens=self.output_tokens + record.output_tokens,
            cost_usd=self.cost_usd + (record.cost_usd or 0.0),
            unpriced_calls=self.unpriced_calls + (record.cost_usd is None),
        )

    def plus_cache_hit(self) -> UsageTotals:
        return dataclasses.replace(self, cache_hits=self.cache_hits + 1)


@dataclass(frozen=True)
class SharedRemainder:
    """What the budgets shared with other tasks had left at their latest ledger sum (``None``: no
    such limit). Each request's output cap is lowered to fit it as well as the run's own budget."""

    tokens: int | None = None
    cost_usd: float | None = None
    scope: str = "a shared budget"


@dataclass(frozen=True)
class Reservation:
    """A model request's worst case (an upper bound of its prompt plus its output cap), held against
    the budget from before the request goes out until its real usage is known."""

    tokens: int
    cost_usd: float
    output_cap: int | None
    """``max_tokens`` to send with the request; ``None`` when no limit applies (nothing is sent)."""


@dataclass
class _State:
    records: list[CallRecord] = field(default_factory=list)
    total: UsageTotals = field(default_factory=UsageTotals)
    phases: dict[str, UsageTotals] = field(default_factory=dict)
    output_tokens_seen: int = 0
    calls_seen: int = 0
    # Held: reservations of requests in flight, plus the real usage of requests that answered but
    # whose call (agent run) is not recorded yet. Budgets count it as spent.
    held_tokens: int = 0
    held_cost: float = 0.0
    in_flight: int = 0
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = field(default_factory=list)


# What the guard decides for one request from (totals, held tokens, held cost, mean output so far).
_Plan = Callable[[UsageTotals, int, float, "int | None"], "Reservation | BudgetExceeded"]


class UsageTracker:
    """Thread-safe (a threading.Lock) and usable from asyncio code.

    Soundings run in parallel, so records arrive from several threads or tasks; the lock is held only
    for in-memory bookkeeping (never across an ``await``), so it cannot stall an event loop.
    A record with ``cache_hit=True`` counts as a cache hit only: its tokens were spent earlier.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _State()

    def record(self, record: CallRecord, *, held: tuple[int, float] = (0, 0.0)) -> None:
        """Count a call; ``held`` is what its requests held (:attr:`CallAccount.held`), released in
        the same step so the spend is never counted twice nor missing for a moment."""
        with self._lock:
            state = self._state
            state.records.append(record)
            state.total = state.total.plus(record)
            state.phases[record.phase] = state.phases.get(record.phase, UsageTotals()).plus(record)
            if not record.cache_hit:
                state.output_tokens_seen += record.output_tokens
                state.calls_seen += 1
            state.held_tokens -= held[0]
            state.held_cost -= held[1]
            self._wake_locked()

    def record_cache_hit(self, phase: str) -> None:
        """Count a phase answered from the cache (no tokens spent)."""
        with self._lock:
            state = self._state
            state.total = state.total.plus_cache_hit()
            state.phases[phase] = state.phases.get(phase, UsageTotals()).plus_cache_hit()

    @property
    def records(self) -> list[CallRecord]:
        """A copy, safe to iterate while other threads record."""
        with self._lock:
            return list(self._state.records)

    def totals(self) -> UsageTotals:
        with self._lock:
            return self._state.total

    def by_phase(self) -> dict[str, UsageTotals]:
        """Totals per phase, in the order phases first appeared."""
        with self._lock:
            return dict(self._state.phases)

    def average_output_tokens(self) -> int | None:
        """Mean output tokens of the calls made so far (cache hits excluded); ``None`` before any."""
        with self._lock:
            return self._average_locked()

    def held(self) -> tuple[int, float]:
        """Tokens and dollars held by requests in flight and by calls not recorded yet."""
        with self._lock:
            return self._state.held_tokens, self._state.held_cost

    def _average_locked(self) -> int | None:
        if not self._state.calls_seen:
            return None
        return math.ceil(self._state.output_tokens_seen / self._state.calls_seen)

    def _snapshot(self) -> tuple[UsageTotals, int, float, int | None]:
        with self._lock:
            state = self._state
            return state.total, state.held_tokens, state.held_cost, self._average_locked()

    def _hold(self, plan: _Plan) -> Reservation | asyncio.Future[None]:
        """Decide and hold in one step under the lock, so two requests can never both fit into
        the same remainder. A request that does not fit while others are in flight gets a future
        to wait on (they may leave room when they settle); with none in flight it is refused."""
        with self._lock:
            state = self._state
            outcome = plan(state.total, state.held_tokens, state.held_cost, self._average_locked())
            if isinstance(outcome, Reservation):
                state.held_tokens += outcome.tokens
                state.held_cost += outcome.cost_usd
                state.in_flight += 1
                return outcome
            if state.in_flight == 0:
                raise outcome
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            state.waiters.append((loop, waiter))
            return waiter

    def _settle(self, reservation: Reservation, tokens: int, cost_usd: float) -> None:
        """A request answered: its reservation becomes what it really used (held until the call
        is recorded)."""
        with self._lock:
            state = self._state
            state.held_tokens += tokens - reservation.tokens
            state.held_cost += cost_usd - reservation.cost_usd
            state.in_flight -= 1
            self._wake_locked()

    def _release(self, reservation: Reservation) -> None:
        """A request failed or was cancelled before it answered: nothing of it is known to be spent."""
        self._settle(reservation, 0, 0.0)

    def _wake_locked(self) -> None:
        waiters, self._state.waiters = self._state.waiters, []
        for loop, waiter in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, waiter)
            except RuntimeError:  # that loop is closed: nobody waits there any more
                pass


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class CallObserver(Protocol):
    """Sees every LLM call of a run, for accounting beyond the run (the cost ledger, budgets per
    DAG or per day that several tasks share). The methods run on the engine's event loop."""

    def before_call(self, phase: str, model: str) -> None:
        """Called before a call is made; raising :class:`BudgetExceeded` stops it."""

    def after_call(self, cascade_id: str, record: CallRecord) -> None:
        """Called once the call (or a cache hit, ``record.cache_hit``) has been counted."""

    def near_limit(self) -> bool:
        """True when a limit is close: the engine then makes this run's calls one at a time."""

    def remaining(self) -> SharedRemainder | None:
        """What the shared budgets had left at the latest ledger sum (``None``: no shared limit);
        every request's output cap is kept within it."""


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


def estimate_tokens(text: str) -> int:
    """A cheap upper-ish estimate (about 4 characters per token), at least 1: no tokenizer needed."""
    return max(1, math.ceil(len(text) / 4))
