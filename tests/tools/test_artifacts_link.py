"""The "Cascade artifacts" extra link of cascade tasks: registered with the provider, on both
operators, pointing at the page filtered to the task instance's session (the id its run uses)."""

from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

from airflow_llm_provider.get_provider_info import get_provider_info
from airflow_llm_provider.operators.cascade import CascadeOperator, session_id_of
from airflow_llm_provider.operators.cascade_phase import CascadePhaseOperator
from airflow_llm_provider.operators.links import CascadeArtifactsLink


def test_the_link_is_registered_and_on_both_operators():
    assert "airflow_llm_provider.operators.links.CascadeArtifactsLink" in get_provider_info()["extra-links"]
    for operator in (CascadeOperator, CascadePhaseOperator):
        assert any(isinstance(link, CascadeArtifactsLink) for link in operator.operator_extra_links)


def test_the_link_filters_the_page_by_the_session_the_run_used():
    ti = SimpleNamespace(
        dag_id="reports", run_id="manual__2026-12-03T10:00:00+00:00", task_id="chart", map_index=2
    )
    url = CascadeArtifactsLink().get_link(None, ti_key=ti)
    parsed = urlparse(url)
    assert parsed.path == "/cascade-artifacts/"
    (session,) = parse_qs(parsed.query)["session_id"]
    assert session == session_id_of({"ti": ti}) == "reports__manual__2026-12-03T10:00:00+00:00__chart__2"
