"""Fuzz with structural bombs (issue 14): YAML alias fans, deep nesting, huge soundings factors and
hostile template expressions. Every example must end in a Cascade or clean issues (loading), or
in a finished run (running), within a few seconds: 0 crashes, 0 hangs."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic_ai.models.test import TestModel

from airflow_llm_provider.cascades.loader import check_cascade
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade

SECONDS_PER_EXAMPLE = 5.0
FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def alias_fans(draw: st.DrawFn) -> str:
    """``levels`` anchors, each a list of ``width`` aliases of the one before: width**levels values."""
    width = draw(st.integers(min_value=1, max_value=12))
    levels = draw(st.integers(min_value=1, max_value=12))
    place = draw(st.sampled_from(["top", "inputs", "schema"]))
    lines = ['a0: &a0 ["lol"]']
    for level in range(1, levels + 1):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    anchors = "\n".join(lines)
    if place == "top":
        return f"cascade_id: fan\nphases:\n  - name: x\n    instructions: hi\n{anchors}\n"
    body = "\n".join("      " + line for line in lines)
    key = "inputs" if place == "inputs" else "output_schema"
    tool = "    tool: python:json.dumps\n" if place == "inputs" else "    instructions: hi\n"
    return f"cascade_id: fan\nphases:\n  - name: x\n{tool}    {key}:\n{body}\n"


@st.composite
def deep_documents(draw: st.DrawFn) -> tuple[str, str]:
    depth = draw(st.integers(min_value=1, max_value=20_000))
    shape = draw(st.sampled_from(["list", "map", "flow"]))
    if shape == "list":
        inner = "[" * depth + "]" * depth
    elif shape == "map":
        inner = '{"a": ' * depth + "1" + "}" * depth
    else:
        inner = "{a: " * depth + "1" + "}" * depth
    suffix = draw(st.sampled_from([".json", ".yaml"]))
    if suffix == ".json" and shape == "flow":
        suffix = ".yaml"
    text = (
        '{"cascade_id": "deep", "phases": [{"name": "x", "instructions": "hi", "output_schema": '
        + inner
        + "}]}"
    )
    return text, suffix


def _check_within_bounds(tmp_path_factory, text: str, suffix: str = ".yaml") -> None:
    path = tmp_path_factory.mktemp("bomb") / f"cascade{suffix}"
    path.write_text(text)
    started = time.perf_counter()
    result = check_cascade(path)
    elapsed = time.perf_counter() - started
    assert elapsed < SECONDS_PER_EXAMPLE, f"{elapsed:.1f}s"
    assert (result.cascade is None) == bool(result.issues)
    for issue in result.issues:
        assert issue.file == str(path) and issue.message


@FAST
@given(alias_fans())
def test_alias_fans_load_or_fail_within_bounds(tmp_path_factory, text):
    _check_within_bounds(tmp_path_factory, text)


@FAST
@given(deep_documents())
def test_deep_documents_load_or_fail_within_bounds(tmp_path_factory, document):
    _check_within_bounds(tmp_path_factory, *document)


@FAST
@given(
    factor=st.one_of(st.integers(min_value=-3, max_value=10**12), st.just(10**9)),
    templated=st.booleans(),
)
def test_huge_soundings_factors_are_refused_or_run_without_allocating(tmp_path_factory, factor, templated):
    phase = {
        "name": "x",
        "instructions": "hi",
        "soundings": {"factor": "{{ input.n }}" if templated else factor},
    }
    path = tmp_path_factory.mktemp("factor") / "c.json"
    path.write_text(json.dumps({"cascade_id": "f", "phases": [phase]}))
    result = check_cascade(path)
    if result.cascade is None:
        assert result.issues
        return
    started = time.perf_counter()
    outcome = run_cascade(result.cascade, {"n": factor}, RunOptions(model_factory=lambda _: TestModel()))
    assert time.perf_counter() - started < SECONDS_PER_EXAMPLE
    if factor > 20:  # over the default max_soundings
        assert outcome.status == "failed" and "max_soundings" in (outcome.error or "")


EXPRESSIONS = st.sampled_from(
    [
        "{{ 10 ** (10 ** 10) }}",
        "{{ 2 ** 100000 }}",
        "{{ 'a' * 10 ** 9 }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "{{ range(100000) | list | join(',') * 1000 }}",
        "{% set x = [1] %}{% for i in range(60) %}{% set x = x + x %}{% endfor %}{{ x | length }}",
        "{{ ('x' * 1000000).replace('x', 'yy' * 1000) }}",
        "{{ input.n * input.n }}",
        "{{ lipsum(10000) }}",
        "{{ '%s' % ('a' * 100) * 100000 }}",
    ]
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(expression=EXPRESSIONS, n=st.integers(min_value=0, max_value=10**50))
def test_hostile_template_expressions_end_quickly(expression, n):
    from airflow_llm_provider.cascades.loader import load_cascade

    spec = load_cascade({"cascade_id": "t", "phases": [{"name": "x", "instructions": expression}]})
    started = time.perf_counter()
    outcome = run_cascade(spec, {"n": n}, RunOptions(model_factory=lambda _: TestModel()))
    assert time.perf_counter() - started < SECONDS_PER_EXAMPLE
    assert outcome.status in ("success", "failed")
    if outcome.status == "failed":
        assert "template" in (outcome.error or "").lower()


@pytest.mark.parametrize("width", [2, 9])
def test_the_reported_bomb_is_refused(tmp_path_factory, width):
    text = "cascade_id: b\nphases:\n  - name: x\n    instructions: hi\na0: &a0 [lol]\n" + "\n".join(
        f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, 30)
    )
    _check_within_bounds(tmp_path_factory, text)
