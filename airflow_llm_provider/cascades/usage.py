"""Token and cost accounting for one cascade run, and the budget guard that stops it before a call.

Pure Python: the runner records every LLM call here and asks the guard before each one, so a budget
is enforced *before* money is spent rather than noticed afterwards. Prices come from the
connection's declared ``extra.price`` (self-hosted models) or from pydantic-ai's price data
(``genai_prices``), imported lazily.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from airflow_llm_provider.cascades.spec import Budget

DEFAULT_OUTPUT_ESTIMATE = 256
"""Output tokens assumed for a call when no ``max_output_tokens`` is given and nothing ran yet."""

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


@dataclass
class _State:
    records: list[CallRecord] = field(default_factory=list)
    total: UsageTotals = field(default_factory=UsageTotals)
    phases: dict[str, UsageTotals] = field(default_factory=dict)
    output_tokens_seen: int = 0
    calls_seen: int = 0


class UsageTracker:
    """Thread-safe (a threading.Lock) and usable from asyncio code.

    Soundings run in parallel, so records arrive from several threads or tasks; the lock is held only
    for in-memory bookkeeping (never across an ``await``), so it cannot stall an event loop.
    A record with ``cache_hit=True`` counts as a cache hit only: its tokens were spent earlier.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _State()

    def record(self, record: CallRecord) -> None:
        with self._lock:
            state = self._state
            state.records.append(record)
            state.total = state.total.plus(record)
            state.phases[record.phase] = state.phases.get(record.phase, UsageTotals()).plus(record)
            if not record.cache_hit:
                state.output_tokens_seen += record.output_tokens
                state.calls_seen += 1

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
            if not self._state.calls_seen:
                return None
            return math.ceil(self._state.output_tokens_seen / self._state.calls_seen)


class CallObserver(Protocol):
    """Sees every LLM call of a run, for accounting beyond the run (the cost ledger, budgets per
    DAG or per day that several tasks share). Both methods run on the engine's event loop."""

    def before_call(self, phase: str, model: str) -> None:
        """Called before a call is made; raising :class:`BudgetExceeded` stops it."""

    def after_call(self, cascade_id: str, record: CallRecord) -> None:
        """Called once the call (or a cache hit, ``record.cache_hit``) has been counted."""

    def near_limit(self) -> bool:
        """True when a limit is close: the engine then makes this run's calls one at a time."""


class BudgetExceeded(RuntimeError):
    """Raised BEFORE a call that would exceed the budget.

    Retrying cannot help (the same call would exceed the same budget), so the runner must fail the
    task without Airflow retries; the message says so for whoever reads the task log.
    """

    def __init__(self, *, limit: str, maximum: float, spent: float, estimate: float, phase: str) -> None:
        self.limit = limit
        self.maximum = maximum
        self.spent = spent
        self.estimate = estimate
        self.phase = phase
        if limit == "max_cost_usd":
            amounts = f"spent ${spent:.6f} so far, this call is estimated at ${estimate:.6f}"
            shown_max = f"${maximum:g}"
        else:
            amounts = f"spent {int(spent)} tokens so far, this call is estimated at {int(estimate)} tokens"
            shown_max = f"{int(maximum)}"
        super().__init__(
            f"Cascade budget {limit}={shown_max} would be exceeded by phase {phase!r}: {amounts}. "
            "The call was not made; a budget error is not retried (raise the budget to continue)."
        )


class BudgetGuard:
    """Checks a run's spending against its ``budget:`` before each LLM call."""

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
        """Raise BudgetExceeded if spent + this call's estimate would exceed a limit.

        The output estimate is ``max_output_tokens`` when the call caps it, else the mean output of
        the calls so far (or 256 before any). An unpriceable model cannot exceed ``max_cost_usd``
        but its tokens still count against ``max_tokens``.
        """
        if self.unlimited:
            return
        totals = self.tracker.totals()
        output_estimate = max_output_tokens
        if output_estimate is None:
            output_estimate = self.tracker.average_output_tokens() or DEFAULT_OUTPUT_ESTIMATE
        input_estimate = max(0, estimated_input_tokens)
        if self.max_tokens is not None:
            spent_tokens = totals.total_tokens
            estimate = input_estimate + output_estimate
            if spent_tokens >= self.max_tokens or spent_tokens + estimate > self.max_tokens:
                raise BudgetExceeded(
                    limit="max_tokens",
                    maximum=self.max_tokens,
                    spent=spent_tokens,
                    estimate=estimate,
                    phase=phase,
                )
        if self.max_cost_usd is not None:
            spent_cost = totals.cost_usd
            cost_estimate = price_call(model, input_estimate, output_estimate, declared=declared)
            if spent_cost >= self.max_cost_usd or (
                cost_estimate is not None and spent_cost + cost_estimate > self.max_cost_usd
            ):
                raise BudgetExceeded(
                    limit="max_cost_usd",
                    maximum=self.max_cost_usd,
                    spent=spent_cost,
                    estimate=cost_estimate or 0.0,
                    phase=phase,
                )

    def remaining(self) -> dict[str, float | None]:
        """What is left of each limit (never negative); ``None`` for a limit that is not set."""
        totals = self.tracker.totals()
        tokens = None if self.max_tokens is None else max(0, self.max_tokens - totals.total_tokens)
        cost = None if self.max_cost_usd is None else max(0.0, round(self.max_cost_usd - totals.cost_usd, 9))
        return {"tokens": tokens, "cost_usd": cost}


def estimate_tokens(text: str) -> int:
    """A cheap upper-ish estimate (about 4 characters per token), at least 1: no tokenizer needed."""
    return max(1, math.ceil(len(text) / 4))
