"""Issue 14.5: model-written text reaches Slack inert (Slack's escaping: ``&``, ``<``, ``>``).

Posts go through apache-airflow-providers-slack's real hooks to the local receiver behind real Slack
connections; what the receiver records is what Slack would have been sent.
"""

from __future__ import annotations

from types import SimpleNamespace

import pendulum

from airflow_llm_provider.notifications.slack import (
    LLMFailureNotifier,
    budget_text,
    deadline_text,
    escape_slack,
    failure_text,
    post_to_slack,
)
from airflow_llm_provider.testing.openai_server import text

# What a model (or a prompt-injected document it summarises) may write.
HOSTILE = "<!channel> urgent: <http://evil.example/login|your Airflow login> for <@U123> & <!here>"
INERT = (
    "&lt;!channel&gt; urgent: &lt;http://evil.example/login|your Airflow login&gt; for &lt;@U123&gt; "
    "&amp; &lt;!here&gt;"
)


def _assert_inert(message: str) -> None:
    for live in ("<!channel>", "<!here>", "<@U123>", "<http://evil.example"):
        assert live not in message, f"{live!r} would be live in Slack: {message}"


def test_escape_slack_follows_slacks_rule() -> None:
    assert escape_slack(HOSTILE) == INERT
    assert escape_slack("a &amp; b") == "a &amp;amp; b"  # shown as typed, not decoded
    assert escape_slack(42) == "42"


def approve(content: str) -> dict:
    """A loop_until check whose reason quotes the model's answer, as many real checks do."""
    return {"valid": False, "reason": f"not approved: {content}"}


def test_model_text_in_a_failure_alert_arrives_inert(
    dag_runner, llm_server, airflow_conn, slack_receiver, tmp_path
) -> None:
    from airflow.providers.common.compat.sdk import DAG

    from airflow_llm_provider.operators.cascade import CascadeOperator

    airflow_conn("llm_slack_escape", llm_server.connection())
    llm_server.responder = lambda request: text(HOSTILE)
    with DAG(
        dag_id=f"escape_{tmp_path.name}"[:200],
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
    ) as dag:
        CascadeOperator(
            task_id="draft_post",
            cascade={
                "cascade_id": "announce",
                "phases": [
                    {
                        "name": "draft",
                        "instructions": "Draft the announcement.",
                        "rules": {"loop_until": "approve", "max_attempts": 1},
                    }
                ],
            },
            tools={"approve": approve},
            llm_conn_id="llm_slack_escape",
            cache=None,
            on_failure_callback=LLMFailureNotifier(slack_conn_id="slack_test_webhook", include_cost=False),
        )

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 3, 15, tz="UTC"))

    assert result.task_states["draft_post"] == "failed"
    (post,) = slack_receiver.posts
    assert INERT in post.text  # the model's text is there, as text
    assert "Cascade: `announce`, phase `draft`" in post.text  # our own formatting is intact
    _assert_inert(post.text)


def test_our_own_link_stays_a_link_while_the_error_is_escaped(slack_receiver) -> None:
    log_url = "http://airflow.example/log?dag_id=nightly&task_id=draft&map_index=-1"
    ti = SimpleNamespace(dag_id="nightly", task_id="draft", run_id="manual__1", try_number=1, log_url=log_url)
    context = {"ti": ti, "task": None, "exception": RuntimeError(f"phase 'draft': rejected: {HOSTILE}")}

    assert post_to_slack("slack_test_api", failure_text(context), channel="#llm-alerts")

    (post,) = slack_receiver.posts
    lines = post.text.splitlines()
    assert lines[0] == ":red_circle: *nightly.draft* failed (run `manual__1`, try 1)"
    assert lines[1] == f"Error: phase 'draft': rejected: {INERT}"
    # A real link: Slack reads `<url|label>` and decodes the &amp; entities in the URL.
    assert lines[2] == f"<{log_url.replace('&', '&amp;')}|Task log>"
    _assert_inert(post.text)


def test_model_text_posted_by_a_dag_arrives_inert(slack_receiver) -> None:
    # The documented way to post model output: our markup around escape_slack(model text).
    assert post_to_slack("slack_test_webhook", f"*Summary*\n>{escape_slack(HOSTILE)}")
    (post,) = slack_receiver.posts
    assert post.text == f"*Summary*\n>{INERT}"


def test_budget_and_deadline_texts_escape_the_names_they_quote() -> None:
    scope = "tag <!channel> on 2026-03-01"
    assert "tag &lt;!channel&gt; on" in budget_text(scope, spent=9, limit=10, breached=False)
    assert "tag &lt;!channel&gt; on" in budget_text(scope, spent=11, limit=10, breached=True)
    late = deadline_text("nightly", "manual__<@U123>", "<!here>")
    assert "`manual__&lt;@U123&gt;`" in late and "(&lt;!here&gt;)" in late
    _assert_inert(late)
