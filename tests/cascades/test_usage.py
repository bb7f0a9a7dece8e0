"""Usage accounting and the budget guard: real genai-prices data, real threads."""

from __future__ import annotations

import threading

import genai_prices
import pytest

from airflow_llm_provider.cascades.budget import BudgetExceeded, BudgetGuard
from airflow_llm_provider.cascades.spec import Budget
from airflow_llm_provider.cascades.usage import (
    CallRecord,
    ModelPrice,
    UsageTotals,
    UsageTracker,
    estimate_tokens,
    price_call,
)


def _genai(model: str, provider: str, input_tokens: int, output_tokens: int) -> float:
    usage = genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    return float(genai_prices.calc_price(usage, model_ref=model, provider_id=provider).total_price)


def _call(phase: str, tokens_in: int, tokens_out: int, cost: float | None, **kw) -> CallRecord:
    return CallRecord(
        phase=phase,
        attempt=kw.pop("attempt", 1),
        model=kw.pop("model", "openai:gpt-4o-mini"),
        requests=kw.pop("requests", 1),
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        cost_usd=cost,
        **kw,
    )


# -- prices ------------------------------------------------------------------------------------


def test_openai_prefixes_share_the_genai_prices_price():
    expected = _genai("gpt-4o-mini", "openai", 1_000_000, 500_000)
    assert expected > 0
    assert price_call("openai:gpt-4o-mini", 1_000_000, 500_000) == pytest.approx(expected)
    assert price_call("openai-chat:gpt-4o-mini", 1_000_000, 500_000) == pytest.approx(expected)
    assert price_call("openai-responses:gpt-4o-mini", 1_000_000, 500_000) == pytest.approx(expected)


def test_anthropic_and_google_are_priced():
    anthropic = price_call("anthropic:claude-3-5-haiku-latest", 10_000, 2_000)
    assert anthropic is not None
    assert anthropic > 0
    assert anthropic == pytest.approx(_genai("claude-3-5-haiku-latest", "anthropic", 10_000, 2_000))
    assert price_call("google-gla:gemini-1.5-flash", 10_000, 2_000) == pytest.approx(
        _genai("gemini-1.5-flash", "google", 10_000, 2_000)
    )


@pytest.mark.parametrize(
    "model",
    ["test", "ollama:llama3.2", "openai:no-such-model-xyz", "nosuchprovider:gpt-4o-mini", "", "openai:"],
)
def test_unknown_models_are_unpriced_not_errors(model):
    assert price_call(model, 1000, 1000) is None


def test_declared_price_wins_and_is_exact():
    declared = ModelPrice(input_per_mtok=0.15, output_per_mtok=0.6)
    assert price_call("ollama:llama3.2", 1_000_000, 500_000, declared=declared) == pytest.approx(0.45)
    # Even over a model genai-prices knows, at a different price.
    cheap = ModelPrice(input_per_mtok=0.0, output_per_mtok=1.0)
    assert price_call("openai:gpt-4o-mini", 1_000_000, 2_000_000, declared=cheap) == pytest.approx(2.0)


def test_model_price_from_extra():
    assert ModelPrice.from_extra(None) is None
    assert ModelPrice.from_extra({"model": "x"}) is None
    assert ModelPrice.from_extra({"price": {"input_per_mtok": 1, "output_per_mtok": 2.5}}) == ModelPrice(
        1.0, 2.5
    )


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ("cheap", "must be an object"),
        ({"input_per_mtok": 1}, "price.output_per_mtok' must be a number"),
        ({"input_per_mtok": "1", "output_per_mtok": 2}, "price.input_per_mtok' must be a number"),
        ({"input_per_mtok": True, "output_per_mtok": 2}, "must be a number"),
        ({"input_per_mtok": -1, "output_per_mtok": 2}, "must be >= 0"),
        ({"input_per_mtok": 1, "output_per_mtok": float("nan")}, "must be >= 0"),
        ({"input_per_mtok": 1, "output_per_mtok": 2, "currency": "EUR"}, "unknown keys ['currency']"),
    ],
)
def test_model_price_from_extra_rejects_malformed(price, message):
    with pytest.raises(ValueError, match="connection extra 'price") as err:
        ModelPrice.from_extra({"price": price})
    assert message in str(err.value)


# -- tracker -----------------------------------------------------------------------------------


def test_tracker_totals_by_phase_with_unpriced_calls_and_cache_hits():
    tracker = UsageTracker()
    tracker.record(_call("draft", 100, 50, 0.001))
    tracker.record(_call("draft", 200, 25, 0.002, attempt=2, requests=2))
    tracker.record(_call("review", 300, 10, None, model="ollama:llama3.2"))
    tracker.record(_call("review", 999, 999, 0.5, cache_hit=True))  # spent by an earlier run
    tracker.record_cache_hit("summary")

    totals = tracker.totals()
    assert totals.cost_usd == pytest.approx(0.003)
    assert totals == UsageTotals(
        requests=4,
        input_tokens=600,
        output_tokens=85,
        cost_usd=totals.cost_usd,
        cache_hits=2,
        unpriced_calls=1,
    )
    assert totals.as_dict() == {
        "requests": 4,
        "input_tokens": 600,
        "output_tokens": 85,
        "cost_usd": 0.003,
        "cache_hits": 2,
        "unpriced_calls": 1,
    }
    phases = tracker.by_phase()
    assert list(phases) == ["draft", "review", "summary"]
    assert phases["draft"].as_dict() == {
        "requests": 3,
        "input_tokens": 300,
        "output_tokens": 75,
        "cost_usd": 0.003,
        "cache_hits": 0,
        "unpriced_calls": 0,
    }
    assert phases["review"] == UsageTotals(
        requests=1, input_tokens=300, output_tokens=10, cost_usd=0.0, cache_hits=1, unpriced_calls=1
    )
    assert phases["summary"] == UsageTotals(cache_hits=1)
    records = tracker.records
    assert len(records) == 4
    records.clear()  # a copy
    assert len(tracker.records) == 4


def test_as_dict_rounds_cost_to_six_decimals():
    assert UsageTotals(cost_usd=0.123456789).as_dict()["cost_usd"] == 0.123457


def test_tracker_is_exact_under_many_threads():
    tracker = UsageTracker()
    threads_n, per_thread = 16, 500
    start = threading.Barrier(threads_n)

    def work(index: int) -> None:
        start.wait()
        for i in range(per_thread):
            tracker.record(_call(f"p{index % 4}", 3, 2, 0.25 if i % 2 else None, sounding=index))
            if i % 10 == 0:
                tracker.record_cache_hit(f"p{index % 4}")
                tracker.totals()  # readers interleave with writers

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    calls = threads_n * per_thread
    totals = tracker.totals()
    assert totals.requests == calls
    assert totals.input_tokens == 3 * calls
    assert totals.output_tokens == 2 * calls
    assert totals.unpriced_calls == calls // 2
    assert totals.cost_usd == 0.25 * (calls // 2)  # exact: quarters add without rounding
    assert totals.cache_hits == threads_n * (per_thread // 10)
    assert len(tracker.records) == calls
    assert sum(t.requests for t in tracker.by_phase().values()) == calls


# -- budget ------------------------------------------------------------------------------------


def test_token_budget_stops_before_the_call_that_would_exceed_it():
    tracker = UsageTracker()
    guard = BudgetGuard(max_tokens=1000, tracker=tracker)
    made = []
    for n in range(10):
        phase = f"step{n}"
        try:
            guard.check_before_call(phase, model="test", estimated_input_tokens=200, max_output_tokens=100)
        except BudgetExceeded as err:
            stopped = err
            break
        tracker.record(_call(phase, 200, 100, None, model="test"))
        made.append(phase)
    else:
        pytest.fail("the budget never stopped the loop")

    assert made == ["step0", "step1", "step2"]  # 900 spent; a 4th call (300 more) would reach 1200
    assert stopped.limit == "max_tokens"
    message = str(stopped)
    assert "'step3'" in message
    assert "max_tokens=1000" in message
    assert "spent 900 tokens" in message
    assert "300 tokens" in message
    assert "not retried" in message
    assert tracker.totals().total_tokens == 900  # never spent past the limit


def test_token_budget_default_output_estimate_uses_the_average_so_far():
    tracker = UsageTracker()
    guard = BudgetGuard(max_tokens=1000, tracker=tracker)
    # Nothing ran yet: 256 output tokens are assumed.
    guard.check_before_call("a", model="test", estimated_input_tokens=744)
    with pytest.raises(BudgetExceeded, match="estimated at 1001 tokens"):
        guard.check_before_call("a", model="test", estimated_input_tokens=745)
    tracker.record(_call("a", 100, 40, None))
    tracker.record(_call("a", 100, 60, None))
    # 300 spent, mean output 50: 650 + 50 fits exactly, 651 + 50 does not.
    guard.check_before_call("b", model="test", estimated_input_tokens=650)
    with pytest.raises(BudgetExceeded, match="estimated at 701 tokens"):
        guard.check_before_call("b", model="test", estimated_input_tokens=651)


def test_budget_already_spent_raises_even_for_a_tiny_call():
    tracker = UsageTracker()
    guard = BudgetGuard(max_tokens=100, max_cost_usd=1.0, tracker=tracker)
    tracker.record(_call("a", 100, 0, None, model="ollama:llama3.2"))
    with pytest.raises(BudgetExceeded, match="max_tokens"):
        guard.check_before_call("b", model="test", estimated_input_tokens=0, max_output_tokens=0)


def test_cost_budget_with_a_declared_price():
    tracker = UsageTracker()
    guard = BudgetGuard(max_cost_usd=1.0, tracker=tracker)
    price = ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)  # $0.40 for 200k in + 100k out
    model = "ollama:llama3.2"
    for phase in ("a", "b"):
        guard.check_before_call(
            phase, model=model, estimated_input_tokens=200_000, max_output_tokens=100_000, declared=price
        )
        tracker.record(_call(phase, 200_000, 100_000, price_call(model, 200_000, 100_000, declared=price)))
    assert tracker.totals().cost_usd == pytest.approx(0.8)
    with pytest.raises(BudgetExceeded) as err:
        guard.check_before_call(
            "c", model=model, estimated_input_tokens=200_000, max_output_tokens=100_000, declared=price
        )
    assert err.value.limit == "max_cost_usd"
    assert err.value.estimate == pytest.approx(0.4)
    assert "max_cost_usd=$1" in str(err.value)
    assert "'c'" in str(err.value)
    assert "not retried" in str(err.value)
    # A smaller call still fits.
    guard.check_before_call(
        "c", model=model, estimated_input_tokens=50_000, max_output_tokens=50_000, declared=price
    )
    assert guard.remaining() == {"tokens": None, "cost_usd": pytest.approx(0.2)}


def test_cost_budget_uses_public_prices_and_ignores_unpriceable_models():
    tracker = UsageTracker()
    one_call = price_call("openai:gpt-4o-mini", 1_000_000, 1_000_000)
    assert one_call is not None
    guard = BudgetGuard(max_cost_usd=one_call * 1.5, tracker=tracker)
    guard.check_before_call(
        "a", model="openai:gpt-4o-mini", estimated_input_tokens=1_000_000, max_output_tokens=1_000_000
    )
    tracker.record(_call("a", 1_000_000, 1_000_000, one_call))
    with pytest.raises(BudgetExceeded, match="max_cost_usd"):
        guard.check_before_call(
            "b",
            model="openai-chat:gpt-4o-mini",
            estimated_input_tokens=1_000_000,
            max_output_tokens=1_000_000,
        )
    # A model nobody prices cannot be stopped by a cost limit...
    guard.check_before_call("b", model="ollama:llama3.2", estimated_input_tokens=10_000_000)
    # ...unless the limit is already spent.
    tracker.record(_call("b", 1_000_000, 1_000_000, one_call))
    with pytest.raises(BudgetExceeded, match="max_cost_usd"):
        guard.check_before_call("c", model="ollama:llama3.2", estimated_input_tokens=1)


def test_unlimited_budget_never_raises():
    tracker = UsageTracker()
    for guard in (BudgetGuard(tracker=tracker), BudgetGuard.from_budget(None, tracker)):
        for _ in range(3):
            guard.check_before_call(
                "a", model="openai:gpt-4o", estimated_input_tokens=10**9, max_output_tokens=10**9
            )
            tracker.record(_call("a", 10**9, 10**9, 10_000.0))
        assert guard.remaining() == {"tokens": None, "cost_usd": None}


def test_from_budget_and_remaining():
    tracker = UsageTracker()
    guard = BudgetGuard.from_budget(Budget.model_validate({"max_tokens": 5000, "max_cost_usd": 2.0}), tracker)
    assert (guard.max_tokens, guard.max_cost_usd, guard.tracker) == (5000, 2.0, tracker)
    assert guard.remaining() == {"tokens": 5000, "cost_usd": 2.0}
    tracker.record(_call("a", 1000, 500, 0.5))
    tracker.record(_call("a", 100, 100, None))
    assert guard.remaining() == {"tokens": 3300, "cost_usd": pytest.approx(1.5)}
    tracker.record(_call("a", 9000, 0, 5.0))
    assert guard.remaining() == {"tokens": 0, "cost_usd": 0.0}
    token_only = BudgetGuard.from_budget(Budget.model_validate({"max_tokens": 10}), UsageTracker())
    assert token_only.remaining() == {"tokens": 10, "cost_usd": None}


def test_guard_rejects_non_positive_limits():
    with pytest.raises(ValueError, match="max_tokens"):
        BudgetGuard(max_tokens=0)
    with pytest.raises(ValueError, match="max_cost_usd"):
        BudgetGuard(max_cost_usd=-1.0)


def test_estimate_tokens():
    assert estimate_tokens("") == 1
    assert estimate_tokens("abc") == 1
    assert estimate_tokens("abcd" * 100) == 100
    assert estimate_tokens("abcd" * 100 + "x") == 101
