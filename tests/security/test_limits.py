"""Runtime resource limits (issue 14, item 3): soundings and map widths, sub-cascade runs, LLM phase
and request timeouts, reply sizes, and their configuration. Against the scripted OpenAI-protocol
server (real HTTP); each test checks the clean failure AND a time or memory bound."""

from __future__ import annotations

import dataclasses
import time
import tracemalloc
from pathlib import Path

import pytest

from airflow_llm_provider.cascades import CascadeValidationError, load_cascade
from airflow_llm_provider.cascades.limits import Limits, LoadLimits, configured_limits
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.testing.openai_server import hang, text
from tests.support.models import server_models


def cascade(**body):
    return load_cascade({"cascade_id": "t", **body})


@pytest.fixture(autouse=True)
def _warm_imports(llm_server):
    """Import the client stack and run one cascade before any measured block: imports under
    tracemalloc take tens of seconds and are not what is measured."""
    llm_server.script(text("warm"))
    run_cascade(
        cascade(phases=[{"name": "w", "instructions": "{{ 1 }}"}]),
        {},
        RunOptions(model_factory=server_models(llm_server)),
    )
    llm_server.reset()


class Bounded:
    """Wall-clock seconds and traced peak memory (MB) of the block it wraps."""

    def __enter__(self) -> Bounded:
        tracemalloc.start()
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self.started
        self.peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()


# -- soundings and map widths -----------------------------------------------------------------------


def test_a_literal_soundings_factor_over_the_cap_fails_validation_with_its_line(tmp_path: Path):
    path = tmp_path / "wide.yaml"
    path.write_text(
        "cascade_id: wide\n"
        "soundings:\n"
        "  factor: 1000000000\n"  # line 3
        "phases:\n"
        "  - name: a\n"
        "    instructions: Go.\n"
        "    soundings:\n"
        "      factor: 21\n"  # line 8
        "      models: {m1: {factor: 30}}\n"  # line 9
    )
    with Bounded() as bound, pytest.raises(CascadeValidationError) as raised:
        load_cascade(path)

    text_ = str(raised.value)
    assert f"{path}:3: soundings.factor: 1,000,000,000 soundings, over the limit of 20" in text_
    assert f"{path}:8: phases[0].soundings.factor: 21 soundings" in text_
    assert f"{path}:9: phases[0].soundings.models: 30 soundings" in text_
    assert "max_soundings" in text_
    assert bound.seconds < 2 and bound.peak_mb < 20


def test_a_templated_soundings_factor_over_the_cap_fails_before_anything_is_allocated(llm_server):
    spec = cascade(
        phases=[{"name": "a", "instructions": "Go.", "soundings": {"factor": "{{ input.n }}"}}],
    )
    with Bounded() as bound:
        result = run_cascade(spec, {"n": 1_000_000_000}, RunOptions(model_factory=server_models(llm_server)))

    assert result.status == "failed"
    assert "soundings.factor is 1,000,000,000 (rendered from '{{ input.n }}')" in result.error
    assert "max_soundings=20" in result.error
    assert llm_server.requests == []  # not one sounding started
    assert bound.seconds < 5 and bound.peak_mb < 50


def test_a_templated_cascade_soundings_factor_over_the_cap_fails_the_run(llm_server):
    spec = cascade(soundings={"factor": "{{ input.n }}"}, phases=[{"name": "a", "instructions": "Go."}])
    with Bounded() as bound:
        result = run_cascade(spec, {"n": 10**9}, RunOptions(model_factory=server_models(llm_server)))

    assert result.status == "failed"
    assert "cascade soundings.factor is 1,000,000,000" in result.error and "max_soundings" in result.error
    assert llm_server.requests == []
    assert bound.seconds < 5 and bound.peak_mb < 50


def test_soundings_within_a_raised_cap_run(llm_server):
    llm_server.responder = lambda request: text("1" if "best" in request.text_of("system") else "draft")
    spec = cascade(
        phases=[
            {"name": "a", "instructions": "Go.", "soundings": {"factor": "{{ input.n }}", "mutate": False}}
        ]
    )
    options = RunOptions(model_factory=server_models(llm_server), limits=Limits(max_soundings=3))

    assert run_cascade(spec, {"n": 3}, options).status == "success"
    assert run_cascade(spec, {"n": 4}, options).error.endswith(
        "(limit max_soundings=3; raise it with [llm_provider] max_soundings or "
        "AIRFLOW__LLM_PROVIDER__MAX_SOUNDINGS)"
    )


def test_a_map_over_wider_than_the_cap_fails_before_any_item_runs(llm_server):
    spec = cascade(
        phases=[
            {"name": "items", "tool": "many"},
            {"name": "each", "instructions": "Handle {{ item }}.", "map_over": "items"},
        ]
    )
    options = RunOptions(
        model_factory=server_models(llm_server),
        tools={"many": lambda: list(range(100_000))},
        limits=Limits(max_map_items=1000),
    )
    with Bounded() as bound:
        result = run_cascade(spec, {}, options)

    assert result.status == "failed"
    assert "map_over 'items' has 100,000 items (limit max_map_items=1000" in result.error
    assert llm_server.requests == []
    assert bound.seconds < 5 and bound.peak_mb < 50


# -- sub-cascade runs -------------------------------------------------------------------------------


def test_a_cascade_calling_itself_from_six_phases_stops_at_the_sub_run_limit(tmp_path: Path):
    # The tester's case: without a run-wide count, the depth limit alone allowed 9,330 sub-runs.
    phases = "".join(f"  - name: p{i}\n    tool: cascade:self.yaml\n" for i in range(6))
    (tmp_path / "self.yaml").write_text(f"cascade_id: self\nphases:\n{phases}")
    lines: list[str] = []
    options = RunOptions(base_dir=tmp_path, on_event=lines.append)

    with Bounded() as bound:
        result = run_cascade(load_cascade(tmp_path / "self.yaml"), {}, options)

    assert result.status == "failed"
    assert "max_sub_cascade_runs=100" in result.error
    started = [line for line in lines if line.startswith("sub-cascade self") and line.endswith("started")]
    assert 1 <= len(started) <= 100
    assert bound.seconds < 30 and bound.peak_mb < 300


def test_sub_cascades_count_across_the_whole_run_tree(llm_server, tmp_path: Path):
    (tmp_path / "child.yaml").write_text("cascade_id: child\nphases:\n  - name: c\n    instructions: Hi.\n")
    llm_server.responder = lambda request: text("ok")
    spec_path = tmp_path / "parent.yaml"
    spec_path.write_text(  # a, then b (a handoff): the third child run is b's
        "cascade_id: parent\nphases:\n"
        "  - name: a\n    instructions: A.\n    handoffs: [b]\n"
        "    sub_cascades: [{ref: child.yaml}, {ref: child.yaml}]\n"
        "  - name: b\n    tool: cascade:child.yaml\n"
    )
    options = RunOptions(model_factory=server_models(llm_server), base_dir=tmp_path)

    assert run_cascade(load_cascade(spec_path), {}, options).status == "success"
    tight = dataclasses.replace(options, limits=Limits(max_sub_cascade_runs=2))
    result = run_cascade(load_cascade(spec_path), {}, tight)
    assert result.status == "failed"
    assert result.error.startswith("phase 'b'") and "max_sub_cascade_runs=2" in result.error


# -- timeouts -------------------------------------------------------------------------------------


def test_an_llm_phase_timeout_is_honoured(llm_server):
    llm_server.script(hang())
    spec = cascade(phases=[{"name": "slow", "instructions": "Go.", "timeout": "1s"}])
    with Bounded() as bound:
        result = run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server)))

    assert result.status == "failed"
    assert result.error == "phase 'slow': timed out after 1s (the phase's timeout '1s')"
    assert bound.seconds < 10


def test_llm_phases_without_a_timeout_get_the_configured_default(llm_server):
    llm_server.script(hang())
    spec = cascade(phases=[{"name": "slow", "instructions": "Go."}])
    options = RunOptions(model_factory=server_models(llm_server), limits=Limits(llm_phase_timeout=1.0))
    with Bounded() as bound:
        result = run_cascade(spec, {}, options)

    assert result.status == "failed"
    assert "timed out after 1s (llm_phase_timeout=1" in result.error
    assert bound.seconds < 10
    assert configured_limits().llm_phase_timeout == 900.0  # the default when nothing is set


def test_models_from_the_hook_get_a_request_timeout(llm_server, airflow_conn, monkeypatch):
    from airflow_llm_provider.hooks.llm import LLMHook

    plain = airflow_conn("llm_plain", llm_server.connection())
    assert LLMHook(llm_conn_id=plain).get_conn().settings["timeout"] == 120.0  # not the client's 600 s
    monkeypatch.setenv("AIRFLOW__LLM_PROVIDER__LLM_REQUEST_TIMEOUT", "45")
    assert LLMHook(llm_conn_id=plain).model_for("openai-chat:gpt-4.1").settings["timeout"] == 45.0

    # The connection's extra.timeout wins; a silent server then fails the call in ~3 tries x 0.5 s.
    quick = airflow_conn(
        "llm_quick", {**llm_server.connection(), "extra": {"model": "openai-chat:m", "timeout": 0.5}}
    )
    hook = LLMHook(llm_conn_id=quick)
    assert hook.get_conn().settings["timeout"] == 0.5
    llm_server.script(hang(), hang(), hang())
    started = time.monotonic()
    with pytest.raises(Exception, match=r"(?i)time"):  # the client's timeout, whatever its class
        hook.run_prompt("hi")
    assert time.monotonic() - started < 20


# -- reply size -------------------------------------------------------------------------------------


def test_a_huge_reply_is_cut_with_a_marker_before_the_next_prompt(llm_server):
    llm_server.script(text("x" * 300_000), text("short"))
    spec = cascade(
        phases=[
            {"name": "big", "instructions": "Write a lot.", "handoffs": ["next"]},
            {"name": "next", "instructions": "Summarize.", "context": {"from": ["big"]}},
        ]
    )
    options = RunOptions(model_factory=server_models(llm_server), limits=Limits(max_reply_chars=1000))
    result = run_cascade(spec, {}, options)

    assert result.status == "success"
    assert len(result.outputs["big"]) == 300_000  # the stored output stays whole
    sent = llm_server.requests[1].text_of("user")
    assert "[... output truncated: 299000 of 300000 characters left out (max_reply_chars=1000) ...]" in sent
    assert len(sent) < 2000


# -- configuration ----------------------------------------------------------------------------------


def test_limits_come_from_airflow_style_environment_variables(monkeypatch):
    monkeypatch.setenv("AIRFLOW__LLM_PROVIDER__MAX_SOUNDINGS", "7")
    monkeypatch.setenv("AIRFLOW__LLM_PROVIDER__TEMPLATE_MAX_SECONDS", "2.5")
    limits = configured_limits()
    assert (limits.max_soundings, limits.template_max_seconds) == (7, 2.5)
    assert RunOptions().limits.max_soundings == 7

    monkeypatch.setenv("AIRFLOW__LLM_PROVIDER__MAX_MAP_ITEMS", "lots")
    with pytest.raises(ValueError, match=r"\[llm_provider\] max_map_items must be an integer, got 'lots'"):
        configured_limits()
    monkeypatch.setenv("AIRFLOW__LLM_PROVIDER__MAX_MAP_ITEMS", "0")
    with pytest.raises(ValueError, match="must be greater than 0"):
        configured_limits()


def test_every_runtime_limit_is_registered_with_its_default():
    from airflow_llm_provider.get_provider_info import get_provider_info

    options = get_provider_info()["config"]["llm_provider"]["options"]
    defaults = Limits()
    for spec in dataclasses.fields(Limits):
        if spec.name == "load":
            continue
        assert spec.name in options, spec.name
        registered = options[spec.name]
        assert float(registered["default"]) == getattr(defaults, spec.name), spec.name
        assert registered["type"] == ("float" if spec.type in (float, "float") else "integer")
    assert isinstance(defaults.load, LoadLimits)
