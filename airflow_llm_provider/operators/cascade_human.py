"""A cascade's questions to a human, on Airflow's human-in-the-loop (Airflow 3.3+).

When the engine raises :class:`~airflow_llm_provider.cascades.human.HumanInputNeeded`, the task
writes the question as the task instance's HITL request (the UI's "Required Actions", answerable
there and through ``PATCH .../hitlDetails``) and raises ``TaskAwaitingInput``: the task instance
waits in ``awaiting_input`` holding no worker, pool slot or triggerer. The answer (or the
scheduler's timeout sweep) resumes it in ``resume_after_human`` (:class:`HumanInputMixin`); the
cascade then runs again with the answers so far, finished phases come from the phase cache and the
phase that asked replays its paid model responses from the run's journal, so nothing is paid twice.
A question the cascade's ``await_signal`` asks goes to ``cascade_signals.py`` instead (a trigger).

Airflow keeps one HITL request per task try and does not change its text once written, so a task
asks one question per try: a cascade that asks twice in one task fails with a message saying so.
(A cascade rendered as a DAG asks from each phase's own task.)
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.providers.common.compat.sdk import AirflowException

from airflow_llm_provider.cascades.human import HumanAnswer, HumanRequest

if TYPE_CHECKING:
    from airflow_llm_provider.cascades.human import RecordedAnswers
    from airflow_llm_provider.cascades.run.journal import ResponseJournal
    from airflow_llm_provider.cascades.spec import Cascade

T = TypeVar("T")

RESUME_METHOD = "resume_after_human"
SUBMIT = "Submit"
OTHER = "Other (write it below)"
MAX_JOURNAL_BYTES = 4 * 1024 * 1024
"""A larger journal is not carried to the resumed try (the phase cache still is)."""
NEEDS = "Airflow 3.3 or later (human-in-the-loop tasks that wait in `awaiting_input`)"


def human_input_unsupported() -> str | None:
    """Why this Airflow cannot host a cascade's questions to a human, or None."""
    try:
        from airflow.sdk.exceptions import TaskAwaitingInput  # noqa: F401
    except ImportError:
        import airflow

        return f"this cascade asks a human, which needs {NEEDS}; this is Airflow {airflow.__version__}"
    return None


def _options(request: HumanRequest) -> list[str]:
    if request.kind != "decision":
        return [SUBMIT]
    labels = [option.label for option in request.options]
    if len(set(labels)) != len(labels):  # the UI shows labels; two alike could not be told apart
        labels = [f"{option.label} ({option.id})" for option in request.options]
    return labels + ([OTHER] if request.allow_custom else [])


def _params(request: HumanRequest) -> dict[str, Any]:
    from airflow.sdk import Param

    if request.kind == "decision":
        if not request.allow_custom:
            return {}
        field = Param("", type="string", description=f"Your answer, with '{OTHER}'")
        return {"custom_text": field.serialize()}
    return {"answer": Param("", type="string", description=request.question[:500]).serialize()}


def _body(request: HumanRequest) -> str:
    lines = [request.question]
    if request.context:
        lines += ["", request.context]
    described = [o for o in request.options if o.description]
    if described:
        lines += ["", *(f"- **{o.label}**: {o.description}" for o in described)]
    lines += ["", f"_Cascade `{request.cascade_id}`, phase `{request.phase}`._"]
    return "\n".join(lines)


def park(
    context: Any,
    request: HumanRequest,
    carried: Mapping[str, Any],
    assignees: Sequence[Mapping[str, str]] = (),
) -> None:
    """Write ``request`` as this task instance's HITL request and wait for it (never returns).
    ``assignees`` (``{"id", "name"}``): the only users allowed to answer, when given."""
    from airflow.sdk.exceptions import TaskAwaitingInput
    from airflow.sdk.execution_time.hitl import HITLUser, upsert_hitl_detail

    ti = context["task_instance"]
    try_number = int(getattr(ti, "try_number", 1) or 1)
    if carried.get("asked_in_try") == try_number:
        raise RuntimeError(
            f"phase '{request.phase}' asks a human a second question in the same task try; Airflow "
            "keeps one human-in-the-loop request per task try and cannot change its text. Split the "
            "questions into phases of a cascade rendered as a DAG (each phase its own task)"
        )
    subject = f"{request.cascade_id} · {request.phase}: {request.question}"[:1000]
    upsert_hitl_detail(
        ti_id=ti.id,
        options=_options(request),
        subject=subject,
        body=_body(request),
        defaults=None,
        multiple=False,
        params=_params(request),
        assigned_users=[HITLUser(id=u["id"], name=u.get("name", u["id"])) for u in assignees] or None,
    )
    _tell_slack(context, subject, request, assignees)
    timeout = dt.timedelta(seconds=request.timeout_seconds) if request.timeout_seconds else None
    raise TaskAwaitingInput(
        method_name=RESUME_METHOD,
        kwargs={**carried, "pending": request.to_dict(), "asked_in_try": try_number},
        timeout=timeout,
    )


def required_actions_link(ti: Any) -> str | None:
    """The task instance's Required Actions page in the UI (the URL Airflow's HITL operators
    build), from ``[api] base_url``; None when that is not set."""
    from urllib.parse import quote, urlencode, urlsplit, urlunsplit

    from airflow.providers.common.compat.sdk import conf

    base_url = conf.get("api", "base_url", fallback=None)
    if not base_url:
        return None
    base = urlsplit(base_url)
    path = f"/dags/{ti.dag_id}/runs/{quote(ti.run_id, safe=':+')}/tasks/{ti.task_id}/required_actions"
    query = urlencode({"map_index": getattr(ti, "map_index", -1)})
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + path, query, ""))


def _tell_slack(
    context: Any, subject: str, request: HumanRequest, assignees: Sequence[Mapping[str, str]]
) -> None:
    """The task's Slack connection (``alert_slack_conn_id``, else ``[llm_provider]
    alert_slack_conn_id``) hears that a question waits, with a link to answer it. Never fails."""
    from airflow.providers.common.compat.sdk import conf

    from airflow_llm_provider.notifications.slack import post_to_slack, question_text

    task = context.get("task")
    conn_id = getattr(task, "alert_slack_conn_id", None) or conf.get(
        "llm_provider", "alert_slack_conn_id", fallback=""
    )
    if not conn_id:
        return
    link = required_actions_link(context["task_instance"])
    if link is None:
        task.log.warning("no [api] base_url: the Slack message goes without a link to answer")
    text = question_text(subject, request.question, link=link, assignees=assignees)
    post_to_slack(conn_id, text, channel=getattr(task, "alert_slack_channel", None))


def carried_state(answers: Mapping[str, HumanAnswer], journal: Mapping[str, list[str]], log: Any) -> dict:
    """What a parked task carries to its resumption: the answers so far and the paid responses."""
    size = len(json.dumps(journal))
    if size > MAX_JOURNAL_BYTES:
        log.warning(
            "the run's %d bytes of model responses are not carried past the question; phases that "
            "finished come from the phase cache, the asking phase is paid again",
            size,
        )
        journal = {}
    return {"answers": {key: answer.to_dict() for key, answer in answers.items()}, "journal": dict(journal)}


def answer_from_event(request: HumanRequest, event: Mapping[str, Any]) -> HumanAnswer:
    """The HITL response (or timeout) as the engine's answer to ``request``."""
    if request.kind == "signal":
        from airflow_llm_provider.operators.cascade_signals import signal_answer_from_event

        return signal_answer_from_event(request, event)
    if "error" in event or event.get("timedout"):
        if "error" in event and event.get("error_type") != "timeout":
            raise RuntimeError(f"the human-in-the-loop request failed: {event['error']}")
        return HumanAnswer(timed_out=True)
    chosen = list(event.get("chosen_options") or [])
    params = dict(event.get("params_input") or {})
    if request.kind != "decision":
        return HumanAnswer(text=str(params.get("answer") or ""))
    if chosen and chosen[0] == OTHER:
        return HumanAnswer(text=str(params.get("custom_text") or ""))
    labels = _options(request)
    for option, label in zip(request.options, labels, strict=False):
        if chosen and chosen[0] == label:
            return HumanAnswer(choice=option.id)
    raise RuntimeError(f"the answer {chosen!r} is none of the options {labels!r}")


def answers_from(carried: Mapping[str, Any]) -> dict[str, HumanAnswer]:
    return {key: HumanAnswer.from_dict(value) for key, value in (carried.get("answers") or {}).items()}


def refuse_if_unsupported(cascade: Cascade, phases: Sequence[str] | None = None) -> None:
    """A cascade (or the ``phases`` of it a task runs) that asks a human needs Airflow's
    human-in-the-loop: refused on older Airflow when the DAG is parsed, naming the phases and the
    version needed."""
    from airflow_llm_provider.cascades.tools.human import human_phases

    asking = [name for name in human_phases(cascade) if phases is None or name in phases]
    reason = human_input_unsupported() if asking else None
    if reason:
        raise AirflowException(f"cascade {cascade.cascade_id}: phases {', '.join(asking)}: {reason}")


def with_answer(carried: Mapping[str, Any], event: Mapping[str, Any]) -> dict[str, Any]:
    """What a resumed task carries, plus the answer the HITL event brought to the pending question."""
    request = HumanRequest.from_dict(carried["pending"])
    try:
        answer = answer_from_event(request, event)
    except RuntimeError as err:
        raise AirflowException(str(err)) from None
    answers = {**(carried.get("answers") or {}), request.key: answer.to_dict()}
    return {**carried, "answers": answers}


def run_or_park(
    task: Any,
    context: Any,
    carried: Mapping[str, Any],
    run: Callable[[RecordedAnswers, ResponseJournal], T],
) -> T:
    """``run(human, journal)`` with the answers and paid responses ``carried`` so far; a new
    question parks the task (:func:`park`) instead of returning."""
    from airflow_llm_provider.cascades.human import HumanInputNeeded, RecordedAnswers
    from airflow_llm_provider.cascades.run.journal import ResponseJournal

    answers = answers_from(carried)
    journal = ResponseJournal(carried.get("journal"))
    try:
        return run(RecordedAnswers(answers), journal)
    except HumanInputNeeded as asked:
        state = carried_state(answers, journal.entries(), task.log)
        if asked.request.kind == "signal":  # another workflow answers: a trigger waits for it
            from airflow_llm_provider.operators.cascade_signals import defer_for_signal

            task.log.info("Waiting for the signal %r", asked.request.question)
            defer_for_signal(task, context, asked.request, state)
        task.log.info("Waiting for a human (Required Actions): %s", asked)
        try:
            carried_on = {**state, "asked_in_try": carried.get("asked_in_try")}
            park(context, asked.request, carried_on, getattr(task, "human_assignees", None) or ())
        except RuntimeError as err:
            raise AirflowException(str(err)) from None
        raise  # park() never returns


class HumanInputMixin:
    """``resume_after_human``: the method Airflow calls when a parked task's question is answered
    (or times out); the operator's ``_run(context, carried)`` runs again with the answer."""

    def _run(self, context: Any, carried: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def resume_after_human(self, context: Any, event: dict[str, Any], **carried: Any) -> Any:
        return self._run(context, with_answer(carried, event))
