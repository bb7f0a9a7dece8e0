"""Cascade files: our valid fixtures load, every malformed one is rejected at the right line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from airflow_llm_provider.cascades import (
    Cascade,
    CascadeValidationError,
    ValidationIssue,
    check_cascade,
    load_cascade,
)
from airflow_llm_provider.cascades.templates import referenced_phases

FIXTURES = Path(__file__).parent / "fixtures"
VALID = sorted(p for p in (FIXTURES / "valid").iterdir() if p.is_file())
INVALID_YAML = sorted((FIXTURES / "invalid").glob("*.yaml"))
_EXPECT = re.compile(r"^# expect: (\d+) (\S+): (.+)$")

# JSON cannot carry comments: file -> (line, field, message part)
JSON_EXPECTATIONS = {
    "json_syntax.json": (4, "<document>", "JSON syntax error: Expecting property name"),
    "json_unknown_key.json": (6, "phases[0].instrucions", "did you mean 'instructions'?"),
    "json_bad_factor.json": (7, "phases[0].soundings.factor", "integer >= 1 or a Jinja template"),
}


def _expectation(path: Path) -> tuple[int, str, str]:
    match = _EXPECT.match(path.read_text().splitlines()[0])
    assert match, f"{path.name}: first line must be '# expect: LINE FIELD: message'"
    return int(match.group(1)), match.group(2), match.group(3)


def test_there_are_enough_negative_fixtures():
    assert len(INVALID_YAML) + len(JSON_EXPECTATIONS) >= 30
    assert {p.name for p in (FIXTURES / "invalid").glob("*.json")} == set(JSON_EXPECTATIONS)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_loads(path):
    result = check_cascade(path)
    assert result.issues == []
    assert isinstance(result.cascade, Cascade)
    assert load_cascade(path) == result.cascade


@pytest.mark.parametrize(
    ("path", "expected"),
    [(p, _expectation(p)) for p in INVALID_YAML]
    + [(FIXTURES / "invalid" / name, exp) for name, exp in JSON_EXPECTATIONS.items()],
    ids=lambda value: value.name if isinstance(value, Path) else "",
)
def test_invalid_fixture_is_rejected_at_the_right_place(path, expected):
    line, field, text = expected
    with pytest.raises(CascadeValidationError) as caught:
        load_cascade(path)
    issues = caught.value.issues
    matching = [i for i in issues if i.line == line and i.field == field]
    assert matching, f"no issue at line {line} on {field}; got:\n{caught.value}"
    assert any(text.lower() in i.message.lower() for i in matching), str(caught.value)
    assert all(i.file == str(path) for i in issues)
    assert f"{path}:{line}: {field}: " in str(caught.value)


def test_all_errors_of_a_file_are_reported(tmp_path):
    path = tmp_path / "three.yaml"
    path.write_text(
        "cascade_id: three\n"
        "phases:\n"
        "  - name: a\n"
        "    instructions: hi\n"
        "    handofs: [b]\n"  # 5: misspelled key
        "    rag: {}\n"  # 6: refused
        "  - name: b\n"
        "    instructions: hi\n"
        "    timeout: soon\n"  # 9: wrong type
    )
    with pytest.raises(CascadeValidationError) as caught:
        load_cascade(path)
    got = {(i.line, i.field) for i in caught.value.issues}
    assert got == {(5, "phases[0].handofs"), (6, "phases[0].rag"), (9, "phases[1].timeout")}
    assert len(str(caught.value).splitlines()) == 3


def test_all_semantic_errors_are_reported(tmp_path):
    path = tmp_path / "refs.yaml"
    path.write_text(
        "cascade_id: refs\n"
        "phases:\n"
        "  - name: a\n"
        "    instructions: '{{ outputs.zz }}'\n"
        "    handoffs: [nowhere]\n"
        "    context: {from: [ghost]}\n"
    )
    with pytest.raises(CascadeValidationError) as caught:
        load_cascade(path)
    assert [i.line for i in caught.value.issues] == [5, 6, 4]


def test_end_is_a_valid_handoff_and_routing_target():
    cascade = load_cascade(
        {
            "cascade_id": "x",
            "phases": [
                {"name": "a", "tool": "python:pkg.mod.run", "routing": {"done": "end"}},
                {"name": "b", "instructions": "hi", "handoffs": ["end"]},
            ],
        }
    )
    assert cascade.phases[1].handoff_targets == ["end"]
    assert cascade.phase("a").kind == "tool"
    assert cascade.phase("b").kind == "llm"


def test_mutate_is_on_unless_turned_off_as_in_windlass():
    base = {"name": "a", "instructions": "hi", "soundings": {"factor": 2, "evaluator_instructions": "x"}}
    cascade = load_cascade({"cascade_id": "x", "phases": [base]})
    assert cascade.phases[0].soundings is not None
    assert cascade.phases[0].soundings.mutate is True
    base["soundings"] = {**base["soundings"], "mutate": False}  # type: ignore[dict-item]
    assert load_cascade({"cascade_id": "x", "phases": [base]}).phases[0].soundings.mutate is False


def test_tool_inputs_is_an_alias_of_inputs():
    cascade = load_cascade(
        {"cascade_id": "x", "phases": [{"name": "a", "tool": "t", "tool_inputs": {"k": "{{ input.v }}"}}]}
    )
    assert cascade.phases[0].inputs == {"k": "{{ input.v }}"}


def test_cosmetic_keys_are_accepted_with_a_warning(tmp_path, caplog):
    path = tmp_path / "ui.yaml"
    path.write_text("cascade_id: ui\nphases:\n  - name: a\n    instructions: hi\n    ui_mode: compact\n")
    result = check_cascade(path)
    assert result.cascade is not None
    assert [(w.line, w.field) for w in result.warnings] == [(5, "phases[0].ui_mode")]
    load_cascade(path)
    assert "ui_mode" in caplog.text


def test_in_memory_mapping_has_no_lines():
    with pytest.raises(CascadeValidationError) as caught:
        load_cascade({"cascade_id": "x", "phases": [{"name": "a"}]})
    assert caught.value.issues == [
        ValidationIssue(
            "<dict>",
            None,
            "phases[0]",
            "a phase needs `instructions` (LLM phase), `tool` (deterministic) or `for_each_row`",
        )
    ]
    assert str(caught.value).startswith("<dict>: phases[0]: ")


@pytest.mark.parametrize(
    "text",
    [
        '{"cascade_id": "x", "phases": [{"name": "a", "tool": "t"}]}',
        "cascade_id: x\nphases:\n  - {name: a, tool: t}\n",
    ],
)
def test_file_without_extension_is_json_or_yaml(tmp_path, text):
    path = tmp_path / "cascade"
    path.write_text(text)
    assert load_cascade(path, tools=["t"]).cascade_id == "x"


def test_only_the_first_yaml_document_counts(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("cascade_id: x\nphases: [{name: a, tool: t}]\n---\nnot: a cascade\n")
    assert load_cascade(path, tools=["t"]).cascade_id == "x"


def test_unreadable_and_empty_files_are_issues_not_tracebacks(tmp_path):
    with pytest.raises(CascadeValidationError, match="cannot read file"):
        load_cascade(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(CascadeValidationError, match="got an empty document"):
        load_cascade(tmp_path / "empty.yaml")


def test_a_cycle_is_legal_as_in_windlass_and_the_visit_limit_overrides_the_default_guard():
    phases = [
        {"name": "a", "instructions": "hi", "handoffs": ["b"]},
        {"name": "b", "tool": "t", "routing": {"again": "a", "default": "end"}},
    ]
    assert load_cascade({"cascade_id": "x", "phases": phases}).max_phase_visits is None
    assert load_cascade({"cascade_id": "x", "phases": phases, "max_phase_visits": 3}).max_phase_visits == 3


def test_models_are_frozen():
    cascade = load_cascade({"cascade_id": "x", "phases": [{"name": "a", "tool": "t"}]})
    with pytest.raises(ValueError, match="frozen"):
        cascade.cascade_id = "y"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ outputs.a }}", {"a"}),
        ("{{ outputs.a.result | length }}", {"a"}),
        ("{{ outputs['b'] }}", {"b"}),
        ("{{ state.output_c }}", {"c"}),
        ("{{ state['output_d'] }}", {"d"}),
        ("{% for x in outputs.e %}{{ x }}{% endfor %}", {"e"}),
        ("{{ input.outputs }} {{ state.last_validation_error }} plain", set()),
        ("{{ (outputs.f or outputs.g) | tojson }}", {"f", "g"}),
    ],
)
def test_referenced_phases_walks_the_ast(source, expected):
    assert referenced_phases(source) == expected


def test_recursive_yaml_alias_is_an_issue(tmp_path):
    path = tmp_path / "rec.yaml"
    path.write_text("cascade_id: x\nphases:\n  - name: a\n    tool: t\n    inputs: &loop {x: *loop}\n")
    with pytest.raises(CascadeValidationError, match="recursive YAML alias"):
        load_cascade(path)
