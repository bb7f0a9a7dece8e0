"""LLMHook against the scripted OpenAI-protocol server: real HTTP, real client retries and timeouts."""

from __future__ import annotations

import time

import pytest
from pydantic import BaseModel

from airflow_llm_provider.hooks.llm import LLMHook
from airflow_llm_provider.testing.openai_server import error, hang, invalid_json, structured, text, tool_call
from tests.log_capture import capture_hook_log


@pytest.fixture
def llm_conn(llm_server, airflow_conn):
    return airflow_conn("llm_test", llm_server.connection(model="gpt-4o-mini", api_key="sk-secret-key-123"))


def test_plain_answer_and_usage(llm_server, llm_conn):
    llm_server.script(text("Blue.", usage=(12, 3)))
    hook = LLMHook(llm_conn_id=llm_conn)
    result = hook.run_prompt("Colour of the sky?", instructions="One word.")

    assert result.output == "Blue."
    assert (result.requests, result.input_tokens, result.output_tokens) == (1, 12, 3)
    assert result.synthetic is False
    (request,) = llm_server.requests
    assert request.path == "/v1/chat/completions"
    assert request.model == "gpt-4o-mini"
    assert request.headers["authorization"] == "Bearer sk-secret-key-123"
    assert request.text_of("system") == "One word."
    assert request.text_of("user") == "Colour of the sky?"


def test_model_override_beats_the_connection(llm_server, llm_conn):
    llm_server.script(text("ok"))
    LLMHook(llm_conn_id=llm_conn, model="openai-chat:gpt-4.1").run_prompt("hi")
    assert llm_server.requests[0].model == "gpt-4.1"


class Capital(BaseModel):
    country: str
    city: str


def test_structured_output_through_the_output_tool(llm_server, llm_conn):
    llm_server.script(structured({"country": "France", "city": "Paris"}))
    result = LLMHook(llm_conn_id=llm_conn).run_prompt("Capital of France?", output_type=Capital)
    assert result.output == Capital(country="France", city="Paris")
    assert llm_server.requests[0].tool_names == ["final_result"]


def test_tool_call_round_trip(llm_server, llm_conn):
    from pydantic_ai import Agent

    calls = []

    model = LLMHook(llm_conn_id=llm_conn).get_conn()
    agent = Agent(model)

    @agent.tool_plain
    def lookup_population(city: str) -> int:
        calls.append(city)
        return 2_100_000

    llm_server.script(tool_call("lookup_population", {"city": "Paris"}), text("About 2.1 million."))
    assert agent.run_sync("How many people live in Paris?").output == "About 2.1 million."
    assert calls == ["Paris"]
    follow_up = llm_server.requests[1].messages
    assert follow_up[-1]["role"] == "tool" and "2100000" in follow_up[-1]["content"]


def test_429_with_retry_after_is_honoured(llm_server, llm_conn):
    llm_server.script(error(429, "slow down", retry_after=1), text("finally"))
    started = time.monotonic()
    assert LLMHook(llm_conn_id=llm_conn).run_prompt("hi").output == "finally"
    first, second = llm_server.requests
    assert second.arrived_at - first.arrived_at >= 0.95
    assert time.monotonic() - started >= 0.95


def test_500_is_retried_by_the_client(llm_server, llm_conn):
    llm_server.script(error(500), text("recovered"))
    assert LLMHook(llm_conn_id=llm_conn).run_prompt("hi").output == "recovered"
    assert [r.status for r in llm_server.requests] == [500, 200]


def test_persistent_500_fails_with_the_server_message(llm_server, llm_conn):
    llm_server.script(*[error(500, "upstream exploded")] * 5)
    with pytest.raises(Exception, match="upstream exploded"):
        LLMHook(llm_conn_id=llm_conn).run_prompt("hi")
    assert len(llm_server.requests) == 3  # the OpenAI client's default: 1 try + 2 retries


def test_hanging_server_hits_the_timeout(llm_server, llm_conn):
    llm_server.script(hang(), hang(), hang())
    started = time.monotonic()
    with pytest.raises(Exception, match=r"(?i)timed? ?out"):
        LLMHook(llm_conn_id=llm_conn, timeout=0.5).run_prompt("hi")
    assert time.monotonic() - started < 10


def test_invalid_json_from_the_server_is_an_error(llm_server, llm_conn):
    from pydantic_ai.exceptions import ModelAPIError

    llm_server.script(invalid_json())
    with pytest.raises(ModelAPIError, match="Failed to decode response as JSON"):
        LLMHook(llm_conn_id=llm_conn).run_prompt("hi")
    assert len(llm_server.requests) == 1


def test_unscripted_request_fails_loudly(llm_server, llm_conn):
    with pytest.raises(Exception, match="no reply scripted"):
        LLMHook(llm_conn_id=llm_conn).run_prompt("hi")


def test_missing_connection_falls_back_to_the_test_model_and_says_so(capfd):
    hook = LLMHook(llm_conn_id="does_not_exist")
    with capture_hook_log(hook, capfd) as hook_log:
        result = hook.run_prompt("hi")
    assert result.synthetic is True
    assert result.model == "test"
    assert "offline test model" in hook.describe()
    logged = hook_log.text
    assert "No LLM connection 'does_not_exist' is configured" in logged
    assert "warning" in logged.lower()


def test_missing_connection_is_an_error_when_fallback_is_off(monkeypatch):
    from airflow.providers.common.compat.sdk import AirflowNotFoundException

    monkeypatch.setenv("AIRFLOW__LLM_PROVIDER__TEST_MODEL_FALLBACK", "False")
    with pytest.raises(AirflowNotFoundException, match="Create it with type 'pydanticai'"):
        LLMHook(llm_conn_id="does_not_exist").get_conn()


def test_default_conn_id_comes_from_provider_config(monkeypatch):
    monkeypatch.setenv("AIRFLOW__LLM_PROVIDER__DEFAULT_LLM_CONN_ID", "team_llm")
    assert LLMHook().llm_conn_id == "team_llm"
    assert LLMHook(llm_conn_id="explicit").llm_conn_id == "explicit"


def test_test_connection_spends_no_tokens(llm_server, llm_conn):
    ok, message = LLMHook(llm_conn_id=llm_conn).test_connection()
    assert ok, message
    assert "openai-chat:gpt-4o-mini" in message
    assert llm_server.requests == []
    assert "sk-secret" not in message


def test_the_connection_is_fetched_once_per_hook(llm_server, llm_conn, monkeypatch):
    """On Airflow 3 every fetch is a round trip to the API server: the model, its name, the
    declared price and the log line must share one."""
    from airflow.providers.common.compat.sdk import BaseHook

    fetched = []
    original = BaseHook.get_connection.__func__

    def counting(cls, conn_id):
        fetched.append(conn_id)
        return original(cls, conn_id)

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(counting))
    hook = LLMHook(llm_conn_id=llm_conn)
    hook.get_conn()
    hook.describe()
    hook.declared_price()
    hook.model_for(None)

    assert fetched == [llm_conn]
