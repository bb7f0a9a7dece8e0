"""A human after an LLM phase's output: ``decision_points`` and ``human_input`` (Windlass's
``runner.py`` ``_check_for_decision_point``/``_handle_decision_point`` and
``_handle_human_input_checkpoint``).

- **Decision points.** When the output holds ``<decision>{"question", "options": [{id, label,
  description?, action?}], "allow_custom"?}</decision>``, the human picks; the pick is kept in
  ``state._decision_<phase>`` (``{choice, label, custom_text, question}``) and routes: the option's
  ``action``, else ``routing[<id>]``, else ``routing._continue``, else the next phase. ``abort``
  fails the phase; ``retry``/``self`` only sets ``state._decision_feedback`` (Windlass does not
  re-run the phase either); a phase name is the route. No answer in time: the run goes on.
- **Human input.** ``human_input: true`` asks for a confirmation of the output; a config chooses
  the type (confirmation, choice, rating, text...), a ``condition`` (a Jinja expression over
  ``state``, ``output`` and ``input``: Windlass evaluates it with Python's ``eval``, which a cascade
  file may not reach here) and the timeout. The answer goes into the phase's history as
  ``Human response: <json>``, not into state, as in Windlass. On timeout ``on_timeout`` applies as
  declared (``abort`` fails the phase; ``continue``; ``default`` answers ``default_value``;
  ``escalate`` continues with a warning). Windlass declares the same rule but always continues.
"""

from __future__ import annotations

import json
import re
from typing import Any

from airflow_llm_provider.cascades.human import HumanAnswer, HumanOption, HumanRequest, ask
from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.core import _to_text
from airflow_llm_provider.cascades.run.results import PhaseFailed
from airflow_llm_provider.cascades.spec import DecisionPointRoutingAction, HumanInputConfig, Phase
from airflow_llm_provider.cascades.tools.builtin import ToolServices

DECISION_PATTERN = re.compile(r"<decision>\s*(\{.*?\})\s*</decision>", re.DOTALL)
_ABORT = ("_abort", "abort")
_RETRY = ("_retry", "retry", "self")


class HumanStepsMixin(RunnerBase):
    """``_human_steps(phase, output, route)``: decision points, then ``human_input``."""

    async def _human_steps(self, phase: Phase, output: Any, route: str | None) -> str | None:
        """Ask what the phase declares; the route to follow (a decision may change it)."""
        text = _to_text(output)
        if phase.decision_points is not None and phase.decision_points.enabled:
            route = await self._decision_point(phase, text, route)
        if phase.human_input:
            await self._human_input(phase, text)
        return route

    async def _ask_human(self, request: HumanRequest) -> HumanAnswer:
        return await ask((self.options.tool_services or ToolServices()).human, request, self._emit)

    def _request(self, phase: Phase, kind: Any, question: str, **fields: Any) -> HumanRequest:
        key = self.questions.key(f"{self.cascade.cascade_id}:{phase.name}", kind, question)
        return HumanRequest(
            key=key,
            phase=phase.name,
            kind=kind,
            question=question,
            cascade_id=self.cascade.cascade_id,
            **fields,
        )

    # -- decision points -------------------------------------------------------------------
    async def _decision_point(self, phase: Phase, text: str, route: str | None) -> str | None:
        config = phase.decision_points
        assert config is not None
        match = DECISION_PATTERN.search(text)
        if match is None:
            return route
        try:
            decision = json.loads(match.group(1))
        except ValueError as err:
            self._emit(f"phase {phase.name}: invalid JSON in <decision>: {err}; ignored")
            return route
        if not isinstance(decision, dict) or not decision.get("question") or not decision.get("options"):
            self._emit(f"phase {phase.name}: <decision> without question or options; ignored")
            return route
        offered = [o for o in decision["options"] if isinstance(o, dict)][: config.ui.max_options]
        options = tuple(
            HumanOption(
                str(o.get("id", f"opt_{i}")),
                str(o.get("label", f"Option {i + 1}")),
                str(o.get("description") or ""),
            )
            for i, o in enumerate(offered)
        )
        shown = [
            text[: match.start()].strip() if config.ui.present_output else "",
            str(decision.get("context") or ""),
        ]
        request = self._request(
            phase,
            "decision",
            str(decision["question"]),
            context="\n\n".join(part for part in shown if part),
            options=options,
            allow_custom=bool(decision.get("allow_custom", config.ui.allow_text_fallback)),
            timeout_seconds=float(config.timeout_seconds),
        )
        answer = await self._ask_human(request)
        if answer.timed_out:
            self._emit(f"phase {phase.name}: the decision timed out; the run goes on")
            return route
        chosen = next((o for o, raw in zip(options, offered, strict=True) if o.id == answer.choice), None)
        raw_option = offered[options.index(chosen)] if chosen is not None else {}
        selected = answer.choice or "custom"
        self._state[f"_decision_{phase.name}"] = {
            "choice": selected,
            "label": chosen.label if chosen else selected,
            "custom_text": answer.text,
            "question": request.question,
        }
        action: Any = raw_option.get("action")
        if action is None and config.routing:
            action = config.routing.get(selected, config.routing.get("_continue", "next"))
        if action is None:
            action = "next"
        if isinstance(action, str):
            action = (
                DecisionPointRoutingAction(fail=True)
                if action in _ABORT
                else DecisionPointRoutingAction(to="self", inject="feedback")
                if action in _RETRY
                else DecisionPointRoutingAction(to=action)
            )
        if action.fail:
            detail = f" - {answer.text}" if answer.text else ""
            raise PhaseFailed(phase.name, f"Decision aborted: {chosen.label if chosen else selected}{detail}")
        if action.to == "self":
            self._state["_decision_feedback"] = answer.text or (chosen.label if chosen else selected)
            return route
        if action.to in (None, "next"):
            return route
        return action.to

    # -- human_input -----------------------------------------------------------------------
    async def _human_input(self, phase: Phase, text: str) -> None:
        config = (
            phase.human_input
            if isinstance(phase.human_input, HumanInputConfig)
            else HumanInputConfig.model_validate({})
        )
        if config.condition and not self._condition_holds(phase, config.condition, text):
            self._emit(f"phase {phase.name}: human_input condition not met; not asked")
            return
        question = config.prompt or f"Review the output of phase '{phase.name}'."
        kind, allow_custom = "text", False
        options: tuple[HumanOption, ...] = ()
        if config.type == "confirmation":
            kind, options, allow_custom = (
                "decision",
                (HumanOption("yes", "Yes"), HumanOption("no", "No")),
                False,
            )
        elif config.type in ("choice", "multi_choice") and config.options:
            kind = "decision"
            options = tuple(HumanOption(o.value, o.label, o.description or "") for o in config.options)
            allow_custom = any(o.requires_text for o in config.options)
        elif config.type == "rating":
            labels = config.rating_labels or []
            kind = "decision"
            options = tuple(
                HumanOption(str(n), labels[n - 1] if n <= len(labels) else str(n))
                for n in range(1, config.max_rating + 1)
            )
        request = self._request(
            phase,
            kind,
            question,
            context=text,
            options=options,
            allow_custom=allow_custom,
            timeout_seconds=float(config.timeout_seconds) if config.timeout_seconds else None,
        )
        answer = await self._ask_human(request)
        if answer.timed_out:
            if config.on_timeout == "abort":
                raise PhaseFailed(phase.name, "no human answered in time (human_input.on_timeout: abort)")
            if config.on_timeout != "default":
                self._emit(f"phase {phase.name}: no human answered in time; on_timeout: {config.on_timeout}")
                return
            response: dict[str, Any] = {"value": config.default_value, "timed_out": True}
        elif answer.choice is not None:
            response = {"choice": answer.choice}
            if config.type == "confirmation":
                response = {"confirmed": answer.choice == "yes"}
        else:
            response = {"text": answer.text}
        message = {"role": "user", "content": f"Human response: {json.dumps(response, default=str)}"}
        conversation = self._conversations.get(phase.name) or [{"role": "assistant", "content": text}]
        self._conversations[phase.name] = [*conversation, message]

    def _condition_holds(self, phase: Phase, condition: str, text: str) -> bool:
        """Windlass's condition, as a sandboxed Jinja expression; an error asks anyway (Windlass)."""
        try:
            expression = self._env.compile_expression(condition)
            return bool(expression(state=dict(self._state), output=text, input=self._input))
        except Exception as err:
            self._emit(f"phase {phase.name}: human_input condition failed ({err}); asking anyway")
            return True
