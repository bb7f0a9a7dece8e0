"""The human family of built-in tools: Windlass's ``ask_human``, ``ask_human_custom`` and
``request_decision`` (``W/eddies/human.py``).

Each builds a :class:`~airflow_llm_provider.cascades.human.HumanRequest` and hands it to the
host's channel (``ToolServices.human``): the terminal or an answers file for ``airflow-llm run``,
Airflow's human-in-the-loop for the operators. As in Windlass the answer is also stored in the
run's state under the phase's name, and a wait that times out answers
``"[No response from human]"`` (``ask_human``) or ``{"selected": None, "timeout": True}``
(``request_decision``).

Windlass picks a UI for ``ask_human`` with an LLM classifier and renders ``html`` forms in its
dashboard; here the question is plain text (Markdown in Airflow's UI), ``ui_hint`` and
``layout_hint`` are accepted and ignored, and ``html`` is refused: a model-written form is not
rendered in Airflow's UI.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from airflow_llm_provider.cascades.human import (
    NO_RESPONSE,
    HumanAnswer,
    HumanOption,
    HumanRequest,
    HumanUnavailable,
    ask,
)
from airflow_llm_provider.cascades.tools.builtin import BuiltinTool, ToolContext
from airflow_llm_provider.cascades.tools.state import set_state_function

ASK_TIMEOUT_SECONDS = 3600.0
"""Windlass's ``ask_human`` wait."""
DECISION_TIMEOUT_SECONDS = 600.0
"""Windlass's ``request_decision`` default ``timeout_seconds``."""
HUMAN_TOOLS = frozenset({"ask_human", "ask_human_custom", "request_decision"})


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _options(raw: Any) -> tuple[HumanOption, ...]:
    """``[{id, label, description?}]`` or plain strings, as Windlass's tools take them."""
    options: list[HumanOption] = []
    for index, item in enumerate(raw or []):
        if isinstance(item, dict):
            ident = str(item.get("id") or item.get("value") or item.get("label") or index)
            label = str(item.get("label") or ident)
            options.append(HumanOption(ident, label, str(item.get("description") or "")))
        else:
            options.append(HumanOption(str(item), str(item)))
    return tuple(options)


async def _ask(run: ToolContext, request: HumanRequest) -> HumanAnswer:
    return await ask(run.services.human, request, run.emit)


def _request(
    run: ToolContext,
    kind: Any,
    question: str,
    *,
    extra: str = "",
    options: tuple[HumanOption, ...] = (),
    allow_custom: bool = False,
    timeout: float,
) -> HumanRequest:
    return HumanRequest(
        key=run.questions.key(f"{run.cascade_id}:{run.phase_name}", kind, question),
        phase=run.phase_name,
        kind=kind,
        question=question,
        context=extra,
        options=options,
        allow_custom=allow_custom,
        timeout_seconds=timeout,
        cascade_id=run.cascade_id,
    )


def _ask_human(run: ToolContext) -> Callable[..., Any]:
    remember = set_state_function(run.state)

    async def ask_human(question: str, context: str | None = None, ui_hint: str | None = None) -> str:
        """Ask the human a question and wait for the answer (text)."""
        answer = await _ask(
            run, _request(run, "text", question, extra=_text(context), timeout=ASK_TIMEOUT_SECONDS)
        )
        text = NO_RESPONSE if answer.timed_out else (answer.text or answer.choice or "")
        await remember(run.phase_name, text)
        return text

    return ask_human


def _ask_human_custom(run: ToolContext) -> Callable[..., Any]:
    remember = set_state_function(run.state)

    async def ask_human_custom(
        question: str,
        context: str | None = None,
        images: list[str] | None = None,
        data: Any = None,
        options: list[Any] | None = None,
        ui_hint: str | None = None,
        layout_hint: str | None = None,
        auto_detect: bool = True,
    ) -> str:
        """Ask the human, showing context and data, optionally with choices; returns the answer."""
        shown = "\n\n".join(
            part
            for part in (_text(context), f"```json\n{_text(data)}\n```" if data is not None else "")
            if part
        )
        if images:
            shown += "\n\nImages: " + ", ".join(map(str, images))
        choices = _options(options)
        request = _request(
            run,
            "decision" if choices else "text",
            question,
            extra=shown,
            options=choices,
            allow_custom=bool(choices),
            timeout=ASK_TIMEOUT_SECONDS,
        )
        answer = await _ask(run, request)
        text = NO_RESPONSE if answer.timed_out else (answer.choice or answer.text or "")
        await remember(run.phase_name, text)
        return text

    return ask_human_custom


def _request_decision(run: ToolContext) -> Callable[..., Any]:
    remember = set_state_function(run.state)

    async def request_decision(
        question: str,
        options: list[Any],
        context: str | None = None,
        severity: str = "info",
        allow_custom: bool = True,
        html: str | None = None,
        timeout_seconds: int = int(DECISION_TIMEOUT_SECONDS),
    ) -> dict[str, Any]:
        """Ask the human to choose one of the options (or write their own); returns the choice."""
        if html:
            raise HumanUnavailable(
                "request_decision(html=...) shows a model-written HTML form, which Airflow's UI does "
                "not render; give `options` instead"
            )
        choices = _options(options)
        if not choices:
            raise ValueError("request_decision needs at least one option")
        extra = _text(context)
        if severity and severity != "info":
            extra = f"**Severity: {severity}**\n\n{extra}".strip()
        request = _request(
            run,
            "decision",
            question,
            extra=extra,
            options=choices,
            allow_custom=allow_custom,
            timeout=float(timeout_seconds),
        )
        answer = await _ask(run, request)
        if answer.timed_out:
            result: dict[str, Any] = {"selected": None, "timeout": True}
        elif answer.choice is not None:
            result = {"selected": answer.choice}
        else:
            result = {"selected": "custom", "custom_text": answer.text or ""}
        await remember(run.phase_name, json.dumps(result))
        return result

    return request_decision


TOOLS = (
    BuiltinTool(
        "ask_human",
        make=_ask_human,
        description="Ask the human a question and wait for their answer (free text).",
    ),
    BuiltinTool(
        "ask_human_custom",
        make=_ask_human_custom,
        description=(
            "Ask the human a question, showing context, data and optional choices; "
            "returns their answer or the chosen option."
        ),
    ),
    BuiltinTool(
        "request_decision",
        make=_request_decision,
        description=(
            "Ask the human to decide: give the question and options as [{id, label, description}]. "
            "Returns {selected: <option id>} or {selected: 'custom', custom_text}."
        ),
    ),
)
"""The human family (``builtin.py``)."""


def human_phases(cascade: Any) -> list[str]:
    """Names of the phases of ``cascade`` that may ask a human (offered or calling a human tool)."""
    return [
        phase.name
        for phase in cascade.phases
        if phase.tool in HUMAN_TOOLS or HUMAN_TOOLS.intersection(phase.tackle or ())
    ]
