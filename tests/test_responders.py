"""The conformance responder answers what each request structurally asks for, over real HTTP."""

from __future__ import annotations

import httpx

from airflow_llm_provider.testing.openai_server import ScriptedOpenAIServer
from airflow_llm_provider.testing.responders import minimal_instance, schema_valid_reply


def _ask(server: ScriptedOpenAIServer, body: dict) -> dict:
    reply = httpx.post(f"{server.base_url}/chat/completions", json={"model": "m", **body}, timeout=10)
    reply.raise_for_status()
    return reply.json()["choices"][0]["message"]


def test_structured_validator_and_plain_requests():
    schema = {
        "type": "object",
        "properties": {
            "email": {"type": "string", "pattern": "^[^@]+@[^@]+\\.[a-z]+$"},
            "score": {"type": "integer", "minimum": 3},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 2},
        },
        "required": ["email", "score"],
    }
    with ScriptedOpenAIServer(responder=schema_valid_reply) as server:
        tool = {"type": "function", "function": {"name": "final_result", "parameters": schema}}
        message = _ask(server, {"messages": [{"role": "user", "content": "x"}], "tools": [tool]})
        import json

        arguments = json.loads(message["tool_calls"][0]["function"]["arguments"])
        assert arguments == {"email": "a@example.com", "score": 3, "tags": ["a", "a"]}
        validator = _ask(
            server,
            {"messages": [{"role": "system", "content": 'Return {"valid": true/false, "reason": "..."}'}]},
        )
        assert json.loads(validator["content"])["valid"] is True
        plain = _ask(server, {"messages": [{"role": "user", "content": "Pick the best attempt."}]})
        assert plain["content"] == "1"


def test_minimal_instance_follows_refs_and_unions():
    schema = {
        "$defs": {"P": {"type": "object", "properties": {"n": {"type": ["null", "number"], "minimum": 2}}}},
        "anyOf": [{"type": "null"}, {"$ref": "#/$defs/P"}],
    }
    assert minimal_instance(schema, schema) == {"n": 2}
    loose = {
        "type": "object",
        "required": ["a"],
        "properties": {"t": {"type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}T"}},
    }
    assert minimal_instance(loose, loose) == {"t": "2024-01-01T00:00:00Z", "a": "x"}
