"""Issue 14.4: budgets that hold.

Every request of a budgeted run carries an output cap sized to what the budget has left, and
reserves its worst case before it goes out, so neither one expensive reply nor parallel soundings
can spend past a limit by more than the documented bound (docs/costs.md, "How far a budget can be
overshot"). The scripted OpenAI-protocol server (real HTTP) honours ``max_tokens`` as OpenAI does,
and can also play an upstream that ignores it; what it reports is what a provider would bill, so
the spend is measured on the server's side, not taken from our own accounting.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.budget import DEFAULT_OUTPUT_CAP, BudgetExceeded, BudgetGuard, CallAccount
from airflow_llm_provider.cascades.runner import RunOptions, RunRecord, run_cascade
from airflow_llm_provider.cascades.usage import ModelPrice, Reservation, UsageTracker
from airflow_llm_provider.costs.budgets import LedgerAccounting, TaskIdentity, parse_budgets
from airflow_llm_provider.costs.ledger import LedgerEntry, Scope, SQLiteLedger
from airflow_llm_provider.testing.openai_server import error, structured, text
from tests.support.models import server_models

# $0.001 an input token, $0.0001 an output token: a reply of a million tokens costs $100.
PRICE = ModelPrice(input_per_mtok=1000, output_per_mtok=100)
# The documented bound (docs/costs.md): one request's prompt tokens beyond our estimate of them.
# On this server (which counts JSON characters / 4) the underestimate measures at most 8 tokens.
OVERSHOOT_TOKENS = 8
LONG = "lorem ipsum " * 4000  # ~12k tokens if nothing cut it


def cascade(**body):
    return load_cascade({"cascade_id": "budgeted", **body})


def run(spec, server, **options) -> tuple:
    record = RunRecord()
    result = run_cascade(spec, {}, RunOptions(model_factory=server_models(server), record=record, **options))
    return result, record


def billed_tokens(server) -> int:
    """What the server reported for every answered request: a provider's bill, in tokens."""
    return sum(r.usage[0] + r.usage[1] for r in server.requests if r.usage)


def billed_usd(server, price: ModelPrice = PRICE) -> float:
    return sum(price.cost(*r.usage) for r in server.requests if r.usage)


def cap_of(request) -> int | None:
    return request.body.get("max_completion_tokens", request.body.get("max_tokens"))


def ledger_observer(tmp_path: Path, budgets=()) -> tuple[LedgerAccounting, SQLiteLedger]:
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    identity = TaskIdentity(dag_id="d", run_id="r", task_id="t")
    return LedgerAccounting(ledger, identity, parse_budgets(budgets)), ledger


# -- the scripted server behaves like OpenAI's --------------------------------------------------


def _post(server, body: dict) -> dict:
    request = urllib.request.Request(
        f"{server.base_url}/chat/completions",
        data=json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_the_server_cuts_a_reply_at_max_tokens_unless_scripted_to_ignore_it(llm_server):
    llm_server.script(
        text("abcdefghij" * 10),
        text("abcdefghij" * 10, usage=(7, 5000)),
        text("abcdefghij" * 10, usage=(7, 5000), ignore_max_tokens=True),
        text("short"),
    )
    cut = _post(llm_server, {"max_completion_tokens": 5})
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["choices"][0]["message"]["content"] == "abcdefghij" * 2  # 5 tokens of 4 characters
    assert cut["usage"]["completion_tokens"] == 5
    scripted = _post(llm_server, {"max_tokens": 30})  # the older field counts too
    assert (scripted["usage"]["prompt_tokens"], scripted["usage"]["completion_tokens"]) == (7, 30)
    runaway = _post(llm_server, {"max_completion_tokens": 30})
    assert runaway["usage"]["completion_tokens"] == 5000
    assert runaway["choices"][0]["message"]["content"] == "abcdefghij" * 10
    assert runaway["choices"][0]["finish_reason"] == "stop"
    fits = _post(llm_server, {"max_completion_tokens": 100})
    assert fits["choices"][0]["finish_reason"] == "stop"
    assert [r.finish_reason for r in llm_server.requests] == ["length", "length", "stop", "stop"]


# -- one expensive reply ------------------------------------------------------------------------


def test_a_cost_budget_caps_the_reply_and_refuses_the_next_call(llm_server):
    """The tester's finding: max_cost_usd 1.0, one reply cost $100.01. Now the request says what
    $1 buys, the server stops there, and the next phase is not called."""
    llm_server.responder = lambda request: text(LONG, usage=(10, 1_000_000))
    spec = cascade(
        budget={"max_cost_usd": 1.0},
        phases=[{"name": "a", "instructions": "Write."}, {"name": "b", "instructions": "More."}],
    )
    expensive = ModelPrice(input_per_mtok=1000, output_per_mtok=1000)  # $0.001 a token, both ways
    result, _ = run(spec, llm_server, declared_price=expensive)

    first = llm_server.requests[0]
    assert 900 < cap_of(first) < 1000  # what $1 buys at $0.001 an output token, less the prompt
    assert first.usage[1] == cap_of(first)
    assert first.finish_reason == "length"
    assert len(llm_server.requests) == 1  # b would need more than the cents left: not called
    assert result.status == "failed" and result.budget_exceeded
    assert "max_cost_usd" in result.error
    assert billed_usd(llm_server, expensive) <= 1.0 + OVERSHOOT_TOKENS * 0.001
    assert result.usage["cost_usd"] == pytest.approx(billed_usd(llm_server, expensive))


def test_an_upstream_that_ignores_the_cap_overshoots_by_that_reply_only(llm_server, tmp_path):
    """A server that bills past max_tokens cannot be stopped mid-reply: the run stops before the
    next call, and the ledger holds the true spend."""
    llm_server.responder = lambda request: text("x", usage=(10, 1_000_000), ignore_max_tokens=True)
    observer, ledger = ledger_observer(tmp_path)
    spec = cascade(
        budget={"max_cost_usd": 1.0},
        phases=[
            {"name": "a", "instructions": "Write.", "handoffs": ["b"]},  # b only after a
            {"name": "b", "instructions": "More."},
        ],
    )
    result, _ = run(spec, llm_server, declared_price=PRICE, call_observer=observer)

    assert cap_of(llm_server.requests[0]) == DEFAULT_OUTPUT_CAP  # $1 buys more; the cap was sent
    assert len(llm_server.requests) == 1
    assert result.status == "failed" and result.budget_exceeded
    assert billed_usd(llm_server) == pytest.approx(100.01)
    assert ledger.spent(Scope(dag_id="d", run_id="r")).cost_usd == pytest.approx(100.01)


def test_a_call_refused_between_its_requests_still_records_what_it_spent(llm_server, tmp_path):
    """The overspending reply is malformed, so pydantic-ai asks again within the same call: that
    second request is refused, and the call's spend reaches the ledger although the call failed."""
    llm_server.responder = lambda request: structured(
        "{not json", usage=(10, 1_000_000), ignore_max_tokens=True
    )
    observer, ledger = ledger_observer(tmp_path)
    spec = cascade(
        budget={"max_cost_usd": 1.0},
        phases=[
            {
                "name": "a",
                "instructions": "Answer.",
                "output_schema": {"type": "object", "properties": {"x": {"type": "integer"}}},
            }
        ],
    )
    result, record = run(spec, llm_server, declared_price=PRICE, call_observer=observer)

    assert len(llm_server.requests) == 1
    assert result.status == "failed" and result.budget_exceeded
    (row,) = ledger.entries(Scope(dag_id="d"))
    assert (row["phase"], row["requests"], row["output_tokens"]) == ("a", 1, 1_000_000)
    assert row["cost_usd"] == pytest.approx(100.01)
    assert record.usage is not None and record.usage.held() == (0, 0.0)  # nothing left reserved


# -- parallel soundings -------------------------------------------------------------------------


def _soundings(budget: dict, factor: int = 8) -> object:
    return cascade(
        budget=budget,
        phases=[
            {
                "name": "draft",
                "instructions": "Write a long essay.",
                "soundings": {
                    "factor": factor,
                    "max_parallel": factor,
                    "mutate": False,
                    "evaluator_instructions": "Pick the best.",
                },
            }
        ],
    )


def _overlapping(requests) -> int:
    """The most requests the server was answering at the same moment."""
    events = sorted(
        [(r.arrived_at, 1) for r in requests] + [(r.answered_at or r.arrived_at, -1) for r in requests]
    )
    most = current = 0
    for _, change in events:
        current += change
        most = max(most, current)
    return most


def test_parallel_soundings_stay_within_a_token_budget(llm_server):
    """The tester's finding: max_tokens 500, 8 parallel soundings, 5 calls at once, 2,050 tokens."""
    llm_server.responder = lambda request: text(LONG, delay=0.2)
    result, record = run(_soundings({"max_tokens": 500}), llm_server)

    assert result.status == "failed" and result.budget_exceeded
    assert billed_tokens(llm_server) <= 500 + OVERSHOOT_TOKENS
    assert all(cap_of(r) is not None and cap_of(r) < 500 for r in llm_server.requests)
    # The first request's reservation took all that was left: the others waited, then were refused.
    assert _overlapping(llm_server.requests) == 1
    assert record.usage is not None and record.usage.held() == (0, 0.0)


def test_parallel_soundings_stay_within_a_cost_budget(llm_server):
    llm_server.responder = lambda request: text(LONG, delay=0.2)
    dear = ModelPrice(input_per_mtok=1000, output_per_mtok=1000)  # $1 buys 1000 tokens
    result, _ = run(_soundings({"max_cost_usd": 1.0}), llm_server, declared_price=dear)

    assert result.budget_exceeded
    assert billed_usd(llm_server, dear) <= 1.0 + OVERSHOOT_TOKENS * 0.001


def test_soundings_stay_parallel_while_the_budget_has_room(llm_server):
    llm_server.responder = lambda request: text("A short draft.", delay=0.4)
    result, _ = run(_soundings({"max_tokens": 4 * (DEFAULT_OUTPUT_CAP + 400)}, factor=4), llm_server)

    assert result.status == "success", result.error
    drafts = [r for r in llm_server.requests if not r.tool_names]
    assert len(drafts) == 4
    assert max(r.arrived_at for r in drafts) - min(r.arrived_at for r in drafts) < 0.3
    assert {cap_of(r) for r in drafts} == {DEFAULT_OUTPUT_CAP}


def test_the_output_cap_is_merged_into_the_settings_already_passed(llm_server):
    llm_server.responder = lambda request: text("ok")
    spec = cascade(budget={"max_tokens": 10_000}, phases=[{"name": "a", "instructions": "Hi."}])
    result, _ = run(spec, llm_server, model_settings={"temperature": 0.25, "max_tokens": 64})
    assert result.status == "success", result.error
    (request,) = llm_server.requests
    assert (request.body["temperature"], cap_of(request)) == (0.25, 64)  # the budget never raises it

    llm_server.reset()
    unbudgeted = cascade(phases=[{"name": "a", "instructions": "Hi."}])
    result, _ = run(unbudgeted, llm_server, model_settings={"temperature": 0.25})
    assert result.status == "success", result.error
    (request,) = llm_server.requests
    assert cap_of(request) is None  # no budget of any kind: nothing to derive a cap from


def test_a_failed_request_releases_its_reservation(llm_server):
    llm_server.script(error(400, "bad request"))
    spec = cascade(budget={"max_tokens": 10_000}, phases=[{"name": "a", "instructions": "Hi."}])
    result, record = run(spec, llm_server)
    assert result.status == "failed" and not result.budget_exceeded
    assert record.usage is not None and record.usage.held() == (0, 0.0)
    assert BudgetGuard(max_tokens=10_000, tracker=record.usage).remaining()["tokens"] == 10_000


# -- the reservation itself (pure engine) --------------------------------------------------------


def test_reservations_are_atomic_wait_for_room_and_release_on_cancel():
    async def scenario() -> None:
        tracker = UsageTracker()
        guard = BudgetGuard(max_tokens=1000, tracker=tracker)
        first = CallAccount(guard, "a", "test")
        held = await first.reserve(input_estimate=100, input_bound=300, requested_cap=None)
        assert held.output_cap == 900  # all that is left after the estimate of the prompt
        assert tracker.held() == (1200, 0.0)  # the bound, not the estimate, is held
        # A second request does not fit while the first is in flight: it waits, it is not refused.
        second = CallAccount(guard, "b", "test")
        waiting = asyncio.ensure_future(
            second.reserve(input_estimate=100, input_bound=300, requested_cap=None)
        )
        await asyncio.sleep(0.05)
        assert not waiting.done()
        waiting.cancel()  # cancelled while waiting: nothing of it is held
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert tracker.held() == (1200, 0.0)
        # The first answers with little: the rest is free again, and a new request gets it.
        third = CallAccount(guard, "c", "test")
        waiting = asyncio.ensure_future(
            third.reserve(input_estimate=100, input_bound=300, requested_cap=None)
        )
        await asyncio.sleep(0.05)
        first.settle(held, 120, 80)
        reservation: Reservation = await asyncio.wait_for(waiting, 1)
        assert reservation.output_cap == 1000 - 200 - 100
        third.release(reservation)
        assert tracker.held() == (200, 0.0)  # what the first really spent, until its call is recorded
        # With nothing in flight and nothing left, a request is refused at once.
        first.settle(await first.reserve(input_estimate=10, input_bound=10, requested_cap=None), 10, 790)
        with pytest.raises(BudgetExceeded, match="max_tokens"):
            await CallAccount(guard, "d", "test").reserve(input_estimate=1, input_bound=1, requested_cap=None)

    asyncio.run(scenario())


# -- shared budgets -----------------------------------------------------------------------------


def test_a_shared_budget_remainder_caps_the_request(llm_server, tmp_path):
    observer, ledger = ledger_observer(tmp_path, [{"scope": "dag_run", "max_tokens": 1000}])
    ledger.record(LedgerEntry("d", "r", "earlier", -1, 1, "c", "p", "m", input_tokens=400, output_tokens=100))
    llm_server.responder = lambda request: text(LONG)
    spec = cascade(phases=[{"name": "a", "instructions": "Write."}, {"name": "b", "instructions": "More."}])
    result, _ = run(spec, llm_server, call_observer=observer)

    first = llm_server.requests[0]
    assert 400 < cap_of(first) < 500  # 500 left, less the prompt
    assert result.status == "failed" and result.budget_exceeded
    assert len(llm_server.requests) == 1
    assert ledger.spent(Scope(dag_id="d", run_id="r")).tokens <= 1000 + OVERSHOOT_TOKENS


# -- airflow-llm run ---------------------------------------------------------------------------

CLI = str(Path(sys.executable).with_name("airflow-llm"))
CLI_CASCADE = """\
cascade_id: cli_budgeted
airflow:
  tags: [team_a]
phases:
  - name: a
    instructions: "Write."
    handoffs: [b]
  - name: b
    instructions: "More."
"""


def _cli(tmp_path: Path, llm_server, **config: str) -> subprocess.CompletedProcess:
    path = tmp_path / "cli.yaml"
    path.write_text(CLI_CASCADE)
    env = {
        **os.environ,
        "AIRFLOW_CONN_PYDANTICAI_DEFAULT": json.dumps(llm_server.connection()),
        # No Airflow metadata DB anywhere: the CLI must not need one.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/missing/dir/airflow.db",
        "AIRFLOW__LLM_PROVIDER__LEDGER_PATH": str(tmp_path / "ledger.db"),
        **{f"AIRFLOW__LLM_PROVIDER__{key.upper()}": value for key, value in config.items()},
    }
    return subprocess.run(
        [CLI, "run", str(path)], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_the_cli_writes_the_ledger_without_an_airflow_db(tmp_path, llm_server):
    llm_server.script(text("done", usage=(40, 5)), text("more", usage=(60, 7)))
    answer = _cli(tmp_path, llm_server)
    assert answer.returncode == 0, answer.stderr
    rows = sorted(SQLiteLedger(tmp_path / "ledger.db").entries(), key=lambda row: row["phase"])
    assert [(r["dag_id"], r["task_id"], r["phase"]) for r in rows] == [
        ("cascade_cli_budgeted", "airflow-llm-run", "a"),
        ("cascade_cli_budgeted", "airflow-llm-run", "b"),
    ]
    assert [(r["input_tokens"], r["output_tokens"], r["tags"]) for r in rows] == [
        (40, 5, ",cascade,team_a,"),
        (60, 7, ",cascade,team_a,"),
    ]
    assert not (tmp_path / "missing").exists()


def test_the_cli_honours_the_configured_shared_budgets(tmp_path, llm_server):
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    ledger.record(
        LedgerEntry(
            "another_dag",
            "r",
            "t",
            -1,
            1,
            "c",
            "p",
            "m",
            input_tokens=500,
            tags=("team_a",),
            recorded_at=dt.datetime.now(dt.UTC),
        )
    )
    llm_server.responder = lambda request: text(LONG)
    budgets = json.dumps([{"scope": "tag_day", "tag": "team_a", "max_tokens": 1000}])
    answer = _cli(tmp_path, llm_server, budgets=budgets)

    assert answer.returncode == 1, answer.stderr
    result = json.loads(answer.stdout)
    assert result["status"] == "failed"
    assert "team_a" in result["error"]
    (request,) = llm_server.requests
    assert 400 < cap_of(request) < 500  # the 500 tokens the team had left, less the prompt
    spent = ledger.spent(Scope(tag="team_a", day=dt.datetime.now(dt.UTC).date().isoformat())).tokens
    assert spent <= 1000 + OVERSHOOT_TOKENS
