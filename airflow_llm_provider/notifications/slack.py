"""Slack alerts about LLM work: a failed cascade, a budget threshold or breach, a missed deadline.

Everything goes through apache-airflow-providers-slack, so both of its connection types work: an
incoming webhook (``slackwebhook``) or the Web API (``slack``, which needs a ``channel``). An alert
that cannot be delivered is logged as a WARNING and never fails the task it reports on.

Every message is built by us from text we do not control (errors quoting model output, run ids,
cascade names), so each such value goes through :func:`escape_slack` (Slack's own rule: ``&``,
``<``, ``>`` as entities), which leaves ``<!channel>``, ``<@U123>`` and ``<http://x|y>`` inert, while
the links we build ourselves (:func:`slack_link`) stay links. The engine's registered secrets (LLM
keys) are scrubbed from every text before it is posted (:func:`post_to_slack`); error text also goes
through Airflow's secrets masker (:func:`scrub`).

Slack imports happen inside functions: DAG files import notifiers at parse time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.providers.common.compat.notifier import BaseNotifier

log = logging.getLogger(__name__)

_PHASE = re.compile(r"phase '([^']+)'")


def escape_slack(value: Any) -> str:
    """``value`` as Slack text that formats nothing: ``&``, ``<`` and ``>`` as ``&amp;``, ``&lt;``,
    ``&gt;`` (Slack's escaping rule), so a model's ``<!channel>`` or ``<http://evil|click>`` shows
    as typed instead of pinging a channel or disguising a link."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_link(url: str, label: str) -> str:
    """A link we build (``<url|label>``): the URL's ``|`` percent-encoded and both parts escaped,
    so neither can end the link early or smuggle in a mention."""
    return f"<{escape_slack(url.replace('|', '%7C'))}|{escape_slack(label)}>"


def scrub(text: str) -> str:
    """Untrusted ``text`` (an error) without registered secrets: the engine's registry (LLM keys,
    ``cascades.redact``) and Airflow's secrets masker (every connection password and secret this
    process read). Only for the untrusted parts: Airflow's masker also masks short, common
    passwords (``airflow``), which would break our own links and names."""
    from airflow_llm_provider.cascades.redact import redact

    text = redact(text)
    try:
        try:
            from airflow.sdk.log import redact as airflow_redact
        except ImportError:  # Airflow 2.x
            from airflow.utils.log.secrets_masker import redact as airflow_redact  # type: ignore[no-redef]
        redacted = airflow_redact(text)
    except Exception as err:  # the masker is a second net; the first one has already run
        log.debug("Airflow's secrets masker unavailable for a Slack message: %s", err)
        return text
    return redacted if isinstance(redacted, str) else text


def post_to_slack(slack_conn_id: str, text: str, *, channel: str | None = None) -> bool:
    """Send ``text`` through the connection; False (and a WARNING with the cause) if it failed.

    ``text`` is Slack markup as the caller built it: escape untrusted parts (model output, error
    text) with :func:`escape_slack`. The engine's registered secrets (LLM keys) are scrubbed here,
    whatever the caller did.
    """
    from airflow_llm_provider.cascades.redact import redact

    text = redact(text)
    try:
        from airflow.providers.common.compat.sdk import BaseHook

        conn_type = BaseHook.get_connection(slack_conn_id).conn_type
        if conn_type == "slackwebhook":
            from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

            SlackWebhookHook(slack_webhook_conn_id=slack_conn_id).send(text=text)
        else:
            from airflow.providers.slack.hooks.slack import SlackHook

            if not channel:
                raise ValueError(f"connection {slack_conn_id!r} is a Slack API connection: set a channel")
            SlackHook(slack_conn_id=slack_conn_id).client.chat_postMessage(channel=channel, text=text)
        return True
    except Exception as err:  # an alert must never fail the task it reports on
        log.warning(
            "Slack alert through connection %r was not delivered (%s: %s); the task goes on.",
            slack_conn_id,
            type(err).__name__,
            err,
        )
        return False


def _money(value: float) -> str:
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def failure_text(context: Mapping[str, Any], *, cost_so_far: Any | None = None) -> str:
    """The failure message for a task ``context`` (Airflow's callback context)."""
    ti = context.get("ti") or context.get("task_instance")
    task = context.get("task")
    error = context.get("exception")
    cascade = getattr(task, "cascade", None)
    cascade_name = cascade.get("cascade_id") if isinstance(cascade, Mapping) else cascade
    # Scrubbed before it is cut to length, so a secret straddling the cut cannot leave a prefix.
    error_text = scrub(str(error)) if error is not None else ""
    phase_match = _PHASE.search(error_text)
    e = escape_slack
    lines = [
        f":red_circle: *{e(getattr(ti, 'dag_id', '?'))}.{e(getattr(ti, 'task_id', '?'))}* failed "
        f"(run `{e(getattr(ti, 'run_id', '?'))}`, try {e(getattr(ti, 'try_number', '?'))})"
    ]
    if cascade_name:
        lines.append(
            f"Cascade: `{e(cascade_name)}`" + (f", phase `{e(phase_match[1])}`" if phase_match else "")
        )
    if error is not None:
        lines.append(f"Error: {e(error_text[:500])}")
    if cost_so_far is not None:
        lines.append(f"LLM cost so far: {_money(cost_so_far.cost_usd)} ({cost_so_far.tokens:,} tokens)")
    log_url = getattr(ti, "log_url", None)
    if log_url:
        lines.append(slack_link(str(log_url), "Task log"))
    return "\n".join(lines)


def question_text(
    subject: str, question: str, *, link: str | None, assignees: Sequence[Mapping[str, str]] = ()
) -> str:
    """A human's answer is awaited: the question (model text: escaped, cut), who may answer and
    where (the task's Required Actions page)."""
    e = escape_slack
    lines = [f":raising_hand: *Waiting for an answer*: {e(scrub(subject)[:200])}", e(scrub(question)[:500])]
    if assignees:
        lines.append(
            "Assigned to: " + ", ".join(e(user.get("name") or user.get("id", "?")) for user in assignees)
        )
    if link:
        lines.append(slack_link(link, "Answer in Airflow"))
    return "\n".join(lines)


def budget_text(scope: str, *, spent: float, limit: float, breached: bool, unit: str = "usd") -> str:
    shown = (lambda v: _money(v)) if unit == "usd" else (lambda v: f"{int(v):,} tokens")
    share = f"{spent / limit:.0%}" if limit else "n/a"
    scope = escape_slack(scope)  # names a DAG, run or tag: not ours to trust
    if breached:
        return (
            f":no_entry: LLM budget for {scope} reached: {shown(spent)} spent of {shown(limit)}. "
            "Further calls in this scope are refused until the budget is raised or the period ends."
        )
    return f":warning: LLM budget for {scope} at {share}: {shown(spent)} of {shown(limit)}."


def deadline_text(dag_id: str, run_id: str, deadline: Any = None) -> str:
    when = f" ({escape_slack(deadline)})" if deadline else ""
    return (
        f":alarm_clock: DAG *{escape_slack(dag_id)}* run `{escape_slack(run_id)}` missed its deadline"
        f"{when} and is still not done."
    )


class LLMFailureNotifier(BaseNotifier):
    """``on_failure_callback=LLMFailureNotifier(slack_conn_id=...)``: the DAG, task, run, cascade,
    phase, error, LLM cost so far (from the cost ledger, when it has rows) and a link to the log."""

    template_fields = ("slack_conn_id", "channel")

    def __init__(self, *, slack_conn_id: str, channel: str | None = None, include_cost: bool = True) -> None:
        super().__init__()
        self.slack_conn_id = slack_conn_id
        self.channel = channel
        self.include_cost = include_cost

    def notify(self, context: Any) -> None:
        cost = None
        if self.include_cost:
            cost = _cost_so_far(context)
        post_to_slack(self.slack_conn_id, failure_text(context, cost_so_far=cost), channel=self.channel)


def _cost_so_far(context: Mapping[str, Any]) -> Any | None:
    ti = context.get("ti") or context.get("task_instance")
    if ti is None:
        return None
    try:
        from airflow_llm_provider.costs.ledger import Scope, configured_ledger

        return configured_ledger().spent(Scope(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id))
    except Exception as err:
        log.warning("LLM cost so far unknown for the alert (%s: %s)", type(err).__name__, err)
        return None


async def slack_deadline_alert(
    slack_conn_id: str, channel: str | None = None, context: Mapping[str, Any] | None = None
) -> bool:
    """An Airflow 3.1+ Deadline Alert callback (runs in the triggerer)::

    DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=30),
        callback=AsyncCallback(slack_deadline_alert, kwargs={"slack_conn_id": "slack_alerts"}),
    )
    """
    import asyncio

    dag_run = (context or {}).get("dag_run") or {}
    deadline = ((context or {}).get("deadline") or {}).get("deadline_time")
    # The triggerer gets the run as the REST API shows it (``dag_run_id``).
    run_id = dag_run.get("dag_run_id") or dag_run.get("run_id") or "?"
    text = deadline_text(dag_run.get("dag_id", "?"), run_id, deadline)
    # The Slack hooks are synchronous; keep the triggerer's event loop free while they post.
    return await asyncio.to_thread(post_to_slack, slack_conn_id, text, channel=channel)


def sla_miss_slack_callback(slack_conn_id: str, channel: str | None = None) -> Any:
    """Airflow 2.x: ``DAG(sla_miss_callback=sla_miss_slack_callback("slack_alerts"))``."""

    def callback(dag: Any, task_list: str, blocking_task_list: str, slas: Any, blocking_tis: Any) -> None:
        for sla in slas or []:
            post_to_slack(
                slack_conn_id,
                deadline_text(dag.dag_id, f"{sla.task_id} @ {sla.execution_date}", "task SLA"),
                channel=channel,
            )

    return callback
