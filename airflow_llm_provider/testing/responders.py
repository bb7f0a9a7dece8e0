"""Responders for :class:`~airflow_llm_provider.testing.openai_server.ScriptedOpenAIServer`
that answer any request without a script, for conformance runs over many cascades.

:func:`schema_valid_reply` answers a structured-output request with the smallest object its JSON
Schema accepts; a prompt that asks for the validator protocol (a JSON object with ``"valid"`` and
``"reason"``, as Windlass's validator cascades do) with ``{"valid": true, "reason": ...}``; and
anything else with the text ``1`` (which also reads as a soundings judge's pick). It never calls
the cascade's tools. Every answer is synthetic by construction: use it to
check that cascades *run* (control flow, templates, schemas), never as a model's answer.
"""

from __future__ import annotations

import json
import re
from typing import Any

from airflow_llm_provider.testing.openai_server import RecordedRequest, Reply, structured, text

OUTPUT_TOOL_PREFIX = "final_result"
_VALIDATOR_PROTOCOL = re.compile(r"""["']valid["']\s*:.*["']reason["']""", re.DOTALL)
_PATTERN_CANDIDATES = (
    "a@example.com",
    "x",
    "A",
    "1",
    "abc",
    "2024-01-01T00:00:00Z",
    "2024-01-01",
    "https://example.com",
    "+1-555-0100",
    "555-0100",
    "(555) 555-0100",
    "ABC-123",
    "#ffffff",
)


def schema_valid_reply(request: RecordedRequest) -> Reply:
    """A schema-valid object for the request's output tool, else the text ``1``."""
    for tool in request.body.get("tools", []):
        function = tool.get("function", {}) if isinstance(tool, dict) else {}
        if str(function.get("name", "")).startswith(OUTPUT_TOOL_PREFIX):
            schema = function.get("parameters") or {}
            return structured(minimal_instance(schema, schema))
    response_format = request.body.get("response_format") or {}
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema", {}).get("schema") or {}
        return structured(minimal_instance(schema, schema))
    if _VALIDATOR_PROTOCOL.search(request.text_of("system") + "\n" + request.text_of("user")):
        return text(json.dumps({"valid": True, "reason": "synthetic answer of the conformance responder"}))
    return text("1")


def minimal_instance(schema: Any, root: Any, depth: int = 0) -> Any:
    """The smallest value ``schema`` accepts (all declared properties filled, so templates that
    read optional fields find them)."""
    if depth > 20 or not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        return minimal_instance(_resolve(schema["$ref"], root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [o for o in schema[key] if isinstance(o, dict) and o.get("type") != "null"]
            return minimal_instance((options or schema[key])[0], root, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolve(part["$ref"], root) if "$ref" in part else part)
        return minimal_instance(merged, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        properties = schema.get("properties", {})
        value = {name: minimal_instance(sub, root, depth + 1) for name, sub in properties.items()}
        for name in schema.get("required", []):  # required but not described: any value
            value.setdefault(name, "x")
        return value
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [minimal_instance(schema.get("items", {}), root, depth + 1) for _ in range(count)]
    if kind == "integer":
        return int(_number(schema, 1))
    if kind == "number":
        return _number(schema, 1.0)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema)


def _resolve(ref: str, root: Any) -> Any:
    node = root
    for part in ref.lstrip("#/").split("/"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node


def _number(schema: dict[str, Any], default: float) -> float:
    value = default
    if "minimum" in schema:
        value = max(value, schema["minimum"])
    if "exclusiveMinimum" in schema and isinstance(schema["exclusiveMinimum"], int | float):
        value = max(value, schema["exclusiveMinimum"] + 1)
    if "maximum" in schema:
        value = min(value, schema["maximum"])
    return value


def _string(schema: dict[str, Any]) -> str:
    if schema.get("format") == "email":
        return "a@example.com"
    if schema.get("format") in ("date", "date-time"):
        return "2024-01-01" if schema["format"] == "date" else "2024-01-01T00:00:00Z"
    value = "x"
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            compiled = re.compile(pattern)
        except re.error:
            compiled = None
        if compiled is not None:
            value = next((c for c in _PATTERN_CANDIDATES if compiled.search(c)), value)
    minimum = int(schema.get("minLength", 0))
    if len(value) < minimum:
        value = value + "x" * (minimum - len(value))
    return value
