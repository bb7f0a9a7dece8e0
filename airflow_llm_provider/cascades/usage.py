"""Token and cost accounting for one cascade run: prices, call records, totals, and the tracker
that also holds the reservations of requests in flight (the budget rule itself: ``budget.py``).

Pure Python. Prices come from the connection's declared ``extra.price`` (self-hosted models) or
from pydantic-ai's price data (``genai_prices``), imported lazily.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from airflow_llm_provider.cascades.budget import BudgetExceeded

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


def estimate_tokens(text: str) -> int:
    """A cheap upper-ish estimate (about 4 characters per token), at least 1: no tokenizer needed."""
    return max(1, math.ceil(len(text) / 4))
