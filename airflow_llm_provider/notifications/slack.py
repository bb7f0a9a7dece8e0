"""Slack alerts about LLM work: a failed cascade, a budget threshold or breach, a missed deadline.

Everything goes through apache-airflow-providers-slack, so both of its connection types work: an
incoming webhook (``slackwebhook``) or the Web API (``slack``, which needs a ``channel``). An alert
that cannot be delivered is logged as a WARNING and never fails the task it reports on.

Slack imports happen inside functions: DAG files import notifiers at parse time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from airflow.providers.common.compat.notifier import BaseNotifier

log = logging.getLogger(__name__)

_PHASE = re.compile(r"phase '([^']+)'")


def post_to_slack(slack_conn_id: str, text: str, *, channel: str | None = None) -> bool:
    """Send ``text`` through the connection; False (and a WARNING with the cause) if it failed."""
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
    phase_match = _PHASE.search(str(error or ""))
    lines = [
        f":red_circle: *{getattr(ti, 'dag_id', '?')}.{getattr(ti, 'task_id', '?')}* failed "
        f"(run `{getattr(ti, 'run_id', '?')}`, try {getattr(ti, 'try_number', '?')})"
    ]
    if cascade_name:
        lines.append(f"Cascade: `{cascade_name}`" + (f", phase `{phase_match[1]}`" if phase_match else ""))
    if error is not None:
        lines.append(f"Error: {str(error)[:500]}")
    if cost_so_far is not None:
        lines.append(f"LLM cost so far: {_money(cost_so_far.cost_usd)} ({cost_so_far.tokens:,} tokens)")
    log_url = getattr(ti, "log_url", None)
    if log_url:
        lines.append(f"<{log_url}|Task log>")
    return "\n".join(lines)


def budget_text(scope: str, *, spent: float, limit: float, breached: bool, unit: str = "usd") -> str:
    shown = (lambda v: _money(v)) if unit == "usd" else (lambda v: f"{int(v):,} tokens")
    share = f"{spent / limit:.0%}" if limit else "n/a"
    if breached:
        return (
            f":no_entry: LLM budget for {scope} reached: {shown(spent)} spent of {shown(limit)}. "
            "Further calls in this scope are refused until the budget is raised or the period ends."
        )
    return f":warning: LLM budget for {scope} at {share}: {shown(spent)} of {shown(limit)}."


def deadline_text(dag_id: str, run_id: str, deadline: Any = None) -> str:
    when = f" ({deadline})" if deadline else ""
    return f":alarm_clock: DAG *{dag_id}* run `{run_id}` missed its deadline{when} and is still not done."


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
