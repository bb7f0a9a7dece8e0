"""Issue 14.5: a credential quoted by an upstream error never leaves the process in what we hand out.

The scripted OpenAI server answers 401 with a body that echoes the API key (raw and URL-encoded),
as misconfigured gateways do. What must stay clean: the cascade result JSON (what XCom and
``airflow-llm run`` print), the CLI's stdout and stderr, the Slack message the failure notifier
posts (to the local receiver behind a real Slack connection), the operator's XCom and the text
OpenLineage's ``errorMessage`` facet gets. Nothing of ours is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pendulum

from airflow_llm_provider.cascades.redact import MASK, redact, redact_value, register_secret
from airflow_llm_provider.testing.openai_server import RecordedRequest, Reply, error, text

CLI = str(Path(sys.executable).with_name("airflow-llm"))
# Shaped like a real key ('/' and '+' as in base64 alphabets), so the URL-encoded echo differs.
KEY = "sk-proj-Sx9/Qe+Lm7Wd2Kf4Tz8Vb"
ENCODED_KEY = quote(KEY, safe="")
PROBE = "tool probe: fetch the report"


def _echo_key_401(request: RecordedRequest) -> Reply:
    """A gateway that quotes the credential it was sent back in its error body."""
    return error(
        401,
        f"Incorrect API key provided: {KEY}. Retry with /v1/chat/completions?api_key={ENCODED_KEY}",
    )


def _assert_clean(where: str, text_value: str) -> None:
    assert KEY not in text_value, f"the API key leaked into {where}: {text_value[:2000]}"
    assert ENCODED_KEY not in text_value, f"the URL-encoded key leaked into {where}"


# -- the registry ------------------------------------------------------------------------------


def test_registered_secret_is_masked_in_every_common_encoding() -> None:
    secret = f'pw-{uuid.uuid4().hex[:12]}/"&<+ x'
    other = f"unrelated-{uuid.uuid4().hex[:8]}"
    register_secret(secret)
    encodings = [
        secret,
        json.dumps(secret)[1:-1],  # an error body quoting it as JSON
        quote(secret, safe=""),  # a query string
        secret.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;"),  # an HTML page
        repr(secret)[1:-1],  # an exception's args printed with !r
    ]
    for encoded in encodings:
        assert redact(f"before {encoded} after {other}") == f"before {MASK} after {other}", encoded
    nested = redact_value({"error": [f"x {secret}"], "n": 3, secret: ("t", secret)})
    assert nested == {"error": [f"x {MASK}"], "n": 3, MASK: ("t", MASK)}


def test_trivially_short_values_are_not_registered() -> None:
    register_secret("abcd")  # would shred ordinary text ("abcdef" -> "***ef")
    register_secret(None)
    register_secret("")
    assert redact("abcdef and abcd") == "abcdef and abcd"


# -- the engine, the hook and the CLI ----------------------------------------------------------


def _cascade() -> dict[str, Any]:
    return {"cascade_id": "scrub_me", "phases": [{"name": "draft", "instructions": "Explode."}]}


def test_run_result_and_progress_lines_carry_no_key(llm_server, airflow_conn) -> None:
    from airflow_llm_provider.cascades import load_cascade
    from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
    from airflow_llm_provider.hooks.llm import LLMHook

    airflow_conn("llm_scrub", llm_server.connection(api_key=KEY))
    llm_server.responder = _echo_key_401
    hook = LLMHook(llm_conn_id="llm_scrub")
    lines: list[str] = []

    result = run_cascade(
        load_cascade(_cascade()), {}, RunOptions(model_factory=hook.model_for, on_event=lines.append)
    )

    # The key really was in play: sent by the client, echoed by the server.
    assert llm_server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert result.status == "failed"
    assert "401" in (result.error or "") and MASK in (result.error or "")
    _assert_clean("the result JSON", json.dumps(result.to_dict()))
    _assert_clean("the trace", " ".join(str(run.error) for run in result.trace))
    _assert_clean("the progress lines", "\n".join(lines))


def test_llm_hook_feeds_airflows_masker_too(llm_server, airflow_conn) -> None:
    from airflow_llm_provider.hooks.llm import LLMHook

    # A key Airflow has not seen yet, in an extra field common-ai does not read itself.
    extra_key = f"hdr-{uuid.uuid4().hex}"
    conn = llm_server.connection(api_key=f"sk-{uuid.uuid4().hex}")
    conn["extra"]["headers"] = {"X-Api-Key": extra_key}
    airflow_conn("llm_masked", conn)
    LLMHook(llm_conn_id="llm_masked").get_conn()

    try:
        from airflow.sdk.log import redact as airflow_redact
    except ImportError:  # Airflow 2.x
        from airflow.utils.log.secrets_masker import redact as airflow_redact  # type: ignore[no-redef]
    assert airflow_redact(f"echo {conn['password']} {extra_key}") == "echo *** ***"
    assert redact(f"echo {conn['password']} {extra_key}") == f"echo {MASK} {MASK}"


def test_cli_stdout_and_stderr_carry_no_key(llm_server, tmp_path) -> None:
    path = tmp_path / "scrub.yaml"
    path.write_text(json.dumps(_cascade()))
    llm_server.responder = _echo_key_401
    env = dict(os.environ)
    env["AIRFLOW_CONN_LLM_SCRUB_CLI"] = json.dumps(llm_server.connection(api_key=KEY))

    run = subprocess.run(
        [CLI, "run", str(path), "--conn-id", "llm_scrub_cli"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )

    assert run.returncode == 1, run.stderr
    assert llm_server.requests and llm_server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    answer = json.loads(run.stdout)
    assert "401" in answer["error"] and MASK in answer["error"]
    _assert_clean("the CLI's stdout", run.stdout)
    _assert_clean("the CLI's stderr", run.stderr)


# -- Airflow: XCom, the failure alert, lineage --------------------------------------------------


def _responder(request: RecordedRequest) -> Reply:
    if PROBE in request.text_of("user") or "Explode" in request.text_of("system"):
        return _echo_key_401(request)
    return text("summary of what could be fetched")


def _fetch_tool(base_url: str) -> Any:
    def fetch() -> str:
        """A tool calling an upstream service with the same credential; its error quotes the body."""
        import httpx

        response = httpx.post(
            f"{base_url}/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"model": "report", "messages": [{"role": "user", "content": PROBE}]},
            timeout=30,
        )
        if response.status_code != 200:
            raise RuntimeError(f"upstream answered {response.status_code}: {response.text}")
        return response.text

    return fetch


def test_xcom_and_slack_alert_carry_no_key(
    dag_runner, llm_server, airflow_conn, slack_receiver, tmp_path
) -> None:
    from airflow.providers.common.compat.sdk import DAG

    from airflow_llm_provider.notifications.slack import LLMFailureNotifier
    from airflow_llm_provider.operators.cascade import CascadeOperator

    airflow_conn("llm_scrub_dag", llm_server.connection(api_key=KEY))
    llm_server.responder = _responder
    with DAG(
        dag_id=f"scrub_{tmp_path.name}"[:200],
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
    ) as dag:
        # The tool's error becomes part of the result: `on_error` routes on with {"error": ...}.
        recovers = CascadeOperator(
            task_id="recovers",
            cascade={
                "cascade_id": "fetch_or_summarise",
                "phases": [
                    {"name": "fetch", "tool": "fetch", "on_error": "summarise"},
                    {"name": "summarise", "instructions": "Summarise what you have."},
                ],
            },
            tools={"fetch": _fetch_tool(llm_server.base_url)},
            llm_conn_id="llm_scrub_dag",
            cache=None,
        )
        explodes = CascadeOperator(
            task_id="explodes",
            cascade=_cascade(),
            llm_conn_id="llm_scrub_dag",
            cache=None,
            on_failure_callback=LLMFailureNotifier(slack_conn_id="slack_test_webhook", include_cost=False),
        )
        recovers >> explodes

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 3, 14, tz="UTC"))

    assert result.task_states == {"recovers": "success", "explodes": "failed"}
    assert sum(1 for r in llm_server.requests if r.status == 401) == 2  # the tool's and the phase's
    xcom = result.xcom("recovers")
    fetch_error = xcom["outputs"]["fetch"]["error"]
    assert "upstream answered 401" in fetch_error and MASK in fetch_error
    _assert_clean("the XCom", json.dumps(xcom))
    (post,) = slack_receiver.posts
    assert "phase `draft`" in post.text and "401" in post.text and MASK in post.text
    _assert_clean("the Slack alert", json.dumps(post.body))


def test_lineage_error_text_carries_no_key() -> None:
    from airflow_llm_provider.cascades.runner import RunRecord
    from airflow_llm_provider.cascades.spec import Cascade
    from airflow_llm_provider.operators.cascade import CascadeRunState

    register_secret(KEY)  # what LLMHook does when it builds the model
    state = CascadeRunState(Cascade.model_validate(_cascade()), RunRecord())
    state.fail(RuntimeError(f"phase 'draft': gateway said: bad key {KEY} ({ENCODED_KEY})"))
    assert state.error == f"phase 'draft': gateway said: bad key {MASK} ({MASK})"


def test_failure_alert_also_masks_what_airflows_masker_knows(slack_receiver) -> None:
    from types import SimpleNamespace

    from airflow_llm_provider.hooks.llm import _airflow_mask_secret
    from airflow_llm_provider.notifications.slack import failure_text, post_to_slack

    # A secret the engine never saw (a database password read by another hook in this task).
    db_password = f"pg-{uuid.uuid4().hex}"
    _airflow_mask_secret(db_password)
    ti = SimpleNamespace(dag_id="nightly", task_id="load", run_id="manual__1", try_number=1, log_url=None)
    error = RuntimeError(f"could not connect: login rejected ({db_password})")

    assert post_to_slack("slack_test_webhook", failure_text({"ti": ti, "exception": error}))

    (post,) = slack_receiver.posts
    assert f"login rejected ({MASK})" in post.text
    assert db_password not in json.dumps(post.body)
