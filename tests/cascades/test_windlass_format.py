"""The Windlass format as Windlass's schema accepts it: our own small fixtures, one construct each,
checked through ``check_cascade`` on real files (line numbers, tool path, referenced files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_llm_provider.cascades import CascadeValidationError, load_cascade
from airflow_llm_provider.cascades.loader import check_cascade
from airflow_llm_provider.cascades.references import TOOL_PATH_ENV
from airflow_llm_provider.cascades.report import MigrationReport, file_report, refused_feature
from tests.support.models import server_models


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


VALIDATOR_CASCADE = """\
cascade_id: long_enough
description: Is the content long enough?
inputs_schema:
  content: the text to check
phases:
  - name: judge
    instructions: 'Say {"valid": true} if {{ input.content }} is long.'
"""


def issues_of(path: Path, **kwargs) -> list[tuple[int | None, str, str]]:
    result = check_cascade(path, **kwargs)
    return [(i.line, i.field, i.message) for i in result.issues]


# -- validators and tools by name, from the tool path --------------------------------------------


def test_a_validator_named_in_loop_until_resolves_from_a_sibling_tackle_folder(tmp_path):
    write(tmp_path / "tackle", "long_enough.yaml", VALIDATOR_CASCADE)
    path = write(
        tmp_path / "examples",
        "draft.yaml",
        "cascade_id: draft\nphases:\n  - name: a\n    instructions: write\n    rules:\n"
        "      max_attempts: 2\n      loop_until: long_enough\n",
    )
    assert issues_of(path) == []


def test_a_ward_validator_resolves_from_the_cascades_own_folder_and_by_cascade_id_not_file_name(tmp_path):
    write(tmp_path, "some_file_name.yaml", VALIDATOR_CASCADE)
    path = write(
        tmp_path,
        "draft.yaml",
        "cascade_id: draft\nphases:\n  - name: a\n    instructions: write\n    wards:\n      post:\n"
        "        - validator: long_enough\n          mode: retry\n",
    )
    assert issues_of(path) == []


def test_an_unknown_validator_names_the_tool_path_and_the_closest_name(tmp_path):
    write(tmp_path / "tackle", "long_enough.yaml", VALIDATOR_CASCADE)
    path = write(
        tmp_path / "examples",
        "draft.yaml",
        "cascade_id: draft\nphases:\n  - name: a\n    instructions: write\n    rules:\n"
        "      loop_until: long_enuf\n",
    )
    [(line, field, message)] = issues_of(path)
    assert (line, field) == (6, "phases[0].rules.loop_until")
    assert "unknown validator 'long_enuf' (did you mean 'long_enough'?)" in message
    assert str(tmp_path / "tackle") in message


def test_the_tool_path_is_configurable_by_argument_and_environment(tmp_path, monkeypatch):
    write(tmp_path / "shared_tools", "long_enough.yaml", VALIDATOR_CASCADE)
    path = write(
        tmp_path / "project",
        "draft.yaml",
        "cascade_id: draft\nphases:\n  - name: a\n    instructions: write\n    rules:\n"
        "      loop_until: long_enough\n",
    )
    assert issues_of(path) != []
    assert issues_of(path, tool_path=[tmp_path / "shared_tools"]) == []
    monkeypatch.setenv(TOOL_PATH_ENV, str(tmp_path / "shared_tools"))
    assert issues_of(path) == []


def test_a_cascade_tool_by_cascade_id_in_tackle_and_as_a_phase_tool(tmp_path):
    write(tmp_path / "tackle", "long_enough.yaml", VALIDATOR_CASCADE)
    path = write(
        tmp_path / "examples",
        "uses.yaml",
        "cascade_id: uses\nphases:\n  - name: a\n    instructions: go\n    tackle: [long_enough, route_to]\n"
        "  - name: b\n    tool: long_enough\n    inputs: {content: x}\n",
    )
    assert issues_of(path) == []


def test_unknown_tools_are_refused_before_anything_runs_and_windlass_builtins_say_so(tmp_path):
    path = write(
        tmp_path,
        "tools.yaml",
        "cascade_id: t\nphases:\n  - name: a\n    instructions: go\n    tackle: [rabbitize_start, my_tol]\n"
        "  - name: b\n    tool: sql_data\n    inputs: {conn_id: x, sql: select 1}\n",
    )
    issues = issues_of(path, tools=["my_tool"])
    assert issues == [
        (5, "phases[0].tackle[0]", issues[0][2]),
        (5, "phases[0].tackle[1]", issues[1][2]),
    ]
    assert issues[0][2].startswith(
        "Windlass built-in tool 'rabbitize_start' cannot run on Airflow: it drives"
    )
    assert "unknown tool 'my_tol' (did you mean 'my_tool'?)" in issues[1][2]


def test_files_a_cascade_names_must_exist(tmp_path):
    path = write(
        tmp_path,
        "files.yaml",
        "cascade_id: f\nphases:\n  - name: a\n    instructions: '@prompts/a.j2'\n"
        "  - name: b\n    tool: sql:queries/b.sql\n"
        "  - name: c\n    tool: cascade:child.yaml\n",
    )
    assert [field for _, field, _ in issues_of(path)] == [
        "phases[0].instructions",
        "phases[1].tool",
        "phases[2].tool",
    ]
    write(tmp_path / "prompts", "a.j2", "Hello {{ input.name }}")
    write(tmp_path / "queries", "b.sql", "select 1")
    write(tmp_path, "child.yaml", "cascade_id: child\nphases:\n  - {name: x, instructions: hi}\n")
    assert [field for _, field, _ in issues_of(path)] == []


# -- constructs Windlass's schema accepts ----------------------------------------------------------


def load(body: dict) -> object:
    return load_cascade({"cascade_id": "w", **body})


def test_soundings_models_as_a_map_and_no_evaluator_instructions():
    cascade = load(
        {
            "phases": [
                {
                    "name": "a",
                    "instructions": "hi",
                    "soundings": {"factor": 3, "models": {"a/m1": {"factor": 2}, "b/m2": {"factor": 1}}},
                }
            ]
        }
    )
    soundings = cascade.phases[0].soundings
    assert soundings.model_names == ["a/m1", "b/m2"]
    assert soundings.models["a/m1"].factor == 2
    assert soundings.evaluator_instructions is None


def test_context_from_objects_exclude_and_previous_on_the_first_phase_warns(tmp_path):
    path = write(
        tmp_path,
        "ctx.yaml",
        """\
cascade_id: ctx
phases:
  - name: a
    instructions: first
    context: {from: [previous]}
  - name: b
    instructions: second
  - name: c
    instructions: third
    context:
      from:
        - all
        - {phase: a, include: [output, state], as_role: system}
      exclude: [b]
""",
    )
    result = check_cascade(path)
    assert result.issues == []
    assert [(w.line, w.field) for w in result.warnings] == [(5, "phases[0].context.from[0]")]
    source = result.cascade.phases[2].context.from_[1]
    assert (source.phase, source.include, source.as_role) == ("a", ["output", "state"], "system")


def test_tackle_manifest_string_is_windlass_spelling_and_means_the_list_form():
    string = load(
        {"phases": [{"name": "a", "instructions": "hi", "tackle": "manifest", "manifest_limit": 5}]}
    )
    listed = load({"phases": [{"name": "a", "instructions": "hi", "tackle": ["manifest"]}]})
    assert string.phases[0].tackle == listed.phases[0].tackle == ["manifest"]
    assert string.phases[0].manifest_limit == 5


def test_instructions_from_a_file_are_found_next_to_the_cascade_or_above_it_and_rendered(
    tmp_path, llm_server
):
    from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
    from airflow_llm_provider.testing.openai_server import text

    write(tmp_path / "prompts", "greet.j2", "Greet {{ input.name }} warmly.")
    path = write(
        tmp_path / "examples",
        "greet.yaml",
        "cascade_id: greet\nphases:\n  - name: a\n    instructions: '@prompts/greet.j2'\n",
    )
    cascade = load_cascade(path)
    llm_server.script(text("Hello Ada!"))
    result = run_cascade(
        cascade, {"name": "Ada"}, RunOptions(model_factory=server_models(llm_server), base_dir=path.parent)
    )
    assert result.status == "success", result.error
    assert llm_server.requests[0].text_of("system") == "Greet Ada warmly."


def test_on_error_inline_fallback_is_validated_as_an_llm_phase(tmp_path):
    good = {
        "name": "a",
        "tool": "python:m.f",
        "on_error": {"instructions": "explain", "rules": {"max_turns": 2}},
    }
    cascade = load({"phases": [good]})
    assert cascade.phases[0].on_error_inline == {"instructions": "explain", "rules": {"max_turns": 2}}
    assert cascade.phases[0].on_error_target is None
    with pytest.raises(CascadeValidationError, match=r"phases\[0\]\.on_error: an inline `on_error` fallback"):
        load({"phases": [{"name": "a", "tool": "python:m.f", "on_error": {"rules": {}}}]})
    with pytest.raises(CascadeValidationError, match=r"on_error\.rules\.max_turns"):
        load(
            {
                "phases": [
                    {
                        "name": "a",
                        "tool": "python:m.f",
                        "on_error": {"instructions": "x", "rules": {"max_turns": "x"}},
                    }
                ]
            }
        )


def test_ward_max_attempts_turn_wards_and_triggers_are_accepted(tmp_path):
    path = write(
        tmp_path,
        "misc.yaml",
        """\
cascade_id: misc
triggers:
  - {name: nightly, type: cron, schedule: "0 6 * * *"}
  - {name: hook, type: webhook, auth: none}
phases:
  - name: a
    instructions: hi
    wards:
      post:
        - {validator: python:m.f, mode: retry, max_attempts: 3}
      turn:
        - {validator: python:m.f}
""",
    )
    result = check_cascade(path)
    assert result.issues == []
    assert [w.field for w in result.warnings] == ["phases[0].wards.turn"]
    triggers = result.cascade.triggers
    assert [type(t).__name__ for t in triggers] == ["CronTrigger", "WebhookTrigger"]


def test_keys_windlass_ignores_warn_but_typos_stay_errors(tmp_path):
    path = write(
        tmp_path,
        "keys.yaml",
        "cascade_id: k\ntags: [demo]\n_playground: {x: 1}\nphases:\n  - name: a\n    instructions: hi\n"
        "    context: {from: [all], include: [output]}\n",
    )
    result = check_cascade(path)
    assert result.issues == []
    assert [(w.line, w.field) for w in result.warnings] == [
        (2, "tags"),
        (3, "_playground"),
        (7, "phases[0].context.include"),
    ]
    typo = write(
        tmp_path,
        "typo.yaml",
        "cascade_id: k\nphases:\n  - name: a\n    instructions: hi\n    handofs: [end]\n",
    )
    assert issues_of(typo) == [(5, "phases[0].handofs", "unknown key 'handofs' (did you mean 'handoffs'?)")]


def test_our_own_extensions_stay_strict():
    with pytest.raises(CascadeValidationError, match="unknown key 'max_cost'"):
        load({"budget": {"max_cost": 1}, "phases": [{"name": "a", "instructions": "hi"}]})


def test_template_names_nothing_provides_are_warned(tmp_path):
    path = write(
        tmp_path,
        "vars.yaml",
        "cascade_id: v\nphases:\n  - name: a\n"
        "    instructions: '{{ input.x }} {{ sounding_index }} {{ ds }} {{ sesion }}'\n"
        "    rules:\n      max_attempts: 2\n"
        "      retry_instructions: 'fix {{ validation_error }} ({{ attempt }})'\n",
    )
    result = check_cascade(path)
    assert result.issues == []
    assert [(w.field, w.message) for w in result.warnings] == [
        ("phases[0].instructions", "template variable 'sesion' is provided by nothing here; it renders empty")
    ]


def test_refused_features_say_why_and_never_look_like_type_errors():
    with pytest.raises(CascadeValidationError) as caught:
        load(
            {
                "narrator": {"enabled": True},
                "phases": [{"name": "a", "instructions": "hi", "browser": {"url": "x"}}],
            }
        )
    text = str(caught.value)
    assert "`narrator` (Windlass voice commentary) cannot run on Airflow" in text
    assert "`browser` (Windlass browser automation) cannot run on Airflow" in text


# -- the migration report --------------------------------------------------------------------------


def test_the_report_tells_ok_warning_refused_and_invalid_apart(tmp_path):
    files = {
        "ok.yaml": "cascade_id: ok\nphases:\n  - {name: a, instructions: hi}\n",
        "warn.yaml": "cascade_id: w\ntags: [x]\nphases:\n  - {name: a, instructions: hi}\n",
        "refused.yaml": "cascade_id: r\nphases:\n  - {name: a, instructions: hi, tackle: [rag_search]}\n",
        "invalid.yaml": "cascade_id: i\nphases:\n  - {name: a, instructions: hi, handoffs: [nowhere]}\n",
    }
    reports = []
    for name, text in files.items():
        path = write(tmp_path, name, text)
        result = check_cascade(path)
        reports.append(file_report(name, result.issues, result.warnings))
    report = MigrationReport(reports)
    assert [r.status for r in report.files] == ["ok", "warning", "refused", "invalid"]
    assert report.blocking_features() == [("tool rag_search", 1, 1)]
    assert json.loads(json.dumps(report.to_dict()))["summary"] == {
        "files": 4,
        "ok": 1,
        "warning": 1,
        "refused": 1,
        "invalid": 1,
    }
    assert "4 files: 1 ok, 1 ok with warnings, 1 refused, 1 invalid (50% accepted)" in report.to_text()


def test_refused_feature_names():
    from airflow_llm_provider.cascades.errors import ValidationIssue

    def issue(field: str, message: str) -> ValidationIssue:
        return ValidationIssue("f", 1, field, message)

    assert refused_feature(
        issue("phases[3].soundings.reforge", "`reforge` ... is not supported by airflow-llm-provider yet")
    ) == ("phase.soundings.reforge")
    assert (
        refused_feature(
            issue("memory", "`memory` (Windlass memory) is not supported by airflow-llm-provider yet")
        )
        == "memory"
    )
    assert refused_feature(issue("phases[0].handoffs[0]", "unknown phase 'x'")) is None


def test_windlass_and_our_sql_data_arguments_both_validate(tmp_path):
    windlass = write(
        tmp_path,
        "w.yaml",
        "cascade_id: w\nphases:\n  - name: a\n    tool: sql_data\n    inputs: {query: select 1}\n",
    )
    assert issues_of(windlass) == []
    ours = write(
        tmp_path,
        "o.yaml",
        "cascade_id: o\nphases:\n  - name: a\n    tool: sql_data\n    inputs: {conn_id: db, sql: select 1}\n",
    )
    assert issues_of(ours) == []
    typo = write(
        tmp_path,
        "t.yaml",
        "cascade_id: t\nphases:\n  - name: a\n    tool: sql_data\n    inputs: {querry: select 1}\n",
    )
    [(_, field, message)] = issues_of(typo)
    assert field == "phases[0].inputs" and "`sql_data` takes no input `querry`" in message
