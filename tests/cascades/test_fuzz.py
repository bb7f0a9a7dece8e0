"""Fuzz: whatever a cascade file contains, the loader answers a Cascade or CascadeValidationError."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_llm_provider.cascades import Cascade, CascadeValidationError, check_cascade, load_cascade

VALID = sorted(p for p in (Path(__file__).parent / "fixtures" / "valid").iterdir() if p.is_file())
BASES = [yaml.safe_load(p.read_text()) if p.suffix != ".json" else json.loads(p.read_text()) for p in VALID]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=5),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["{{", "{% if %}", "{{ outputs.x }}", "end", "python:a.b", "5m", "-1", "@file"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=3),
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        action = draw(st.sampled_from(["drop", "rename", "retype"]))
        if action == "drop":
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            parent[str(key)[:-1] + draw(st.text(max_size=2))] = parent.pop(key)
        else:
            parent[key] = draw(values)
    return doc


def _assert_loader_contract(source: Any) -> None:
    issues = []
    try:
        result = load_cascade(source)
    except CascadeValidationError as exc:
        issues = exc.issues
        result = None
    assert isinstance(result, Cascade) or (issues and all(str(issue) for issue in issues))


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_mutated_cascades_load_or_fail_cleanly(doc):
    _assert_loader_contract(doc if isinstance(doc, dict) else {"doc": doc})


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    base=st.sampled_from(VALID),
    cut=st.integers(min_value=0, max_value=2000),
    garbage=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20),
    suffix=st.sampled_from([".yaml", ".json", ""]),
)
def test_garbled_files_load_or_fail_cleanly(tmp_path_factory, base, cut, garbage, suffix):
    text = base.read_text()
    cut = cut % (len(text) + 1)
    path = tmp_path_factory.mktemp("fuzz") / f"cascade{suffix}"
    path.write_text(text[:cut] + garbage + text[cut:], encoding="utf-8")
    _assert_loader_contract(path)
    result = check_cascade(path)
    assert (result.cascade is None) == bool(result.issues)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(values)
def test_arbitrary_yaml_documents_fail_cleanly(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("fuzz") / "doc.yaml"
    try:
        path.write_text(yaml.safe_dump(doc))
    except (yaml.YAMLError, UnicodeEncodeError):
        return
    _assert_loader_contract(path)
