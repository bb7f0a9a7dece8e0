"""The context an LLM phase sees, with Windlass's meaning.

- ``context.from`` entries are phase names, keywords (all/first/previous, by definition order) or
  ``{phase, include: [output, state, messages, images], as_role, condition, messages_filter}``
  objects: ``output`` is the phase's output, ``state`` the state keys it set, ``messages`` its
  conversation; ``images`` never exist in our runs and are skipped; ``as_role: system`` puts the
  block into the system prompt; a false ``condition`` (Jinja) leaves the source out.
- ``context.mode: auto`` keeps anchors (input, outputs of ``anchors.from_phases``, errors) and picks
  earlier messages by ``selection`` (heuristic, or a cheap LLM pick for ``llm``/``hybrid``).
- ``token_budget`` keeps the prompt within ``max_total - reserve_for_output`` tokens.
- Each finished phase leaves its output in ``lineage``, its messages in ``history`` (template
  variables) and, with ``memory:``, in the memory bank.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_llm_provider.cascades.budget import BudgetExceeded
from airflow_llm_provider.cascades.graph import source_name
from airflow_llm_provider.cascades.limits import clip
from airflow_llm_provider.cascades.run.budget_context import (
    Block,
    Candidate,
    candidates_of,
    check_budget,
    heuristic_pick,
    intra_processor,
    join,
    mentions_error,
    pick_menu,
    prune_oldest,
    sliding_window,
    summary_request,
)
from airflow_llm_provider.cascades.run.children import ChildrenMixin
from airflow_llm_provider.cascades.run.core import _describe, _to_text
from airflow_llm_provider.cascades.run.memory import MemoryMixin
from airflow_llm_provider.cascades.run.results import PhaseFailed
from airflow_llm_provider.cascades.spec import Anchors, ContextSource, IntraContext, Phase, Selection
from airflow_llm_provider.cascades.templates import is_template
from airflow_llm_provider.cascades.usage import estimate_tokens

CONVERSATION_LIMIT = 100
"""Messages kept of one phase's conversation (the newest)."""
HISTORY_LIMIT = 1000
"""Messages kept in the run's ``history`` (the newest)."""
MESSAGE_CHARS = 50_000
"""Characters kept of one message."""
_FALSE = frozenset({"", "false", "0", "none", "no", "off"})


class ContextMixin(ChildrenMixin, MemoryMixin):
    """Assembles the prompts of an LLM phase and keeps what later phases may see."""

    # -- the prompts --------------------------------------------------------------------------
    async def _phase_prompts(self, phase: Phase, extra: Mapping[str, Any] | None) -> tuple[str, str]:
        """``(system, user)`` of an LLM phase; then, in Windlass's order, its ``on_start``
        background cascades and its sub-cascades run before the LLM turns."""
        instructions = self.render(phase.instructions or "", extra)
        blocks = await self._fit_budget(phase, instructions, await self._blocks(phase, extra, instructions))
        self._offer_memory_tool(phase)
        self._start_async_cascades(phase, "on_start")
        await self._run_sub_cascades(phase)
        system = "\n\n".join(part for part in (instructions, join(blocks, "system")) if part)
        return system, join(blocks, "user") or "Begin."

    def _user_prompt(self, phase: Phase, extra: Mapping[str, Any] | None) -> str:
        """The user message alone, without LLM calls (auto mode picks by heuristic, ``summarize``
        drops like ``sliding_window``): for a sounding run as its own task."""
        instructions = self.render(phase.instructions or "", extra)
        blocks = self._fit_budget_now(phase, instructions, self._blocks_now(phase, extra, instructions))
        return join(blocks, "user") or "Begin."

    def _history_processors(self, phase: Phase) -> list[Any]:
        """``intra_context`` (phase) or ``auto_context.intra_phase`` (cascade) as pydantic-ai
        capabilities of the phase's agent; none when neither is set."""
        auto = self.cascade.auto_context
        config: IntraContext | None = phase.intra_context or (auto.intra_phase if auto else None)
        if config is None or not config.enabled:
            return []
        from pydantic_ai.capabilities import ProcessHistory

        return [ProcessHistory(intra_processor(config))]

    # -- blocks -------------------------------------------------------------------------------
    async def _blocks(self, phase: Phase, extra: Mapping[str, Any] | None, task: str) -> list[Block]:
        if phase.context is None or phase.context.mode != "auto":
            return self._explicit_blocks(phase, extra)
        anchors, candidates, selection, room = self._auto_parts(phase, extra)
        picked = heuristic_pick(candidates, task, room, selection)
        if selection.strategy == "llm" or (selection.strategy == "hybrid" and len(candidates) > 5):
            pool = candidates
            if selection.strategy == "hybrid":  # heuristic prefilter over twice the room, as Windlass
                pool = heuristic_pick(candidates, task, room * 2, selection)
            if selection.strategy == "llm" or len(pool) > 5:
                chosen = await self._llm_pick(phase, pool, task, room)
                if chosen is not None:
                    picked = chosen
        return anchors + [_selected_block(c) for c in picked]

    def _blocks_now(self, phase: Phase, extra: Mapping[str, Any] | None, task: str) -> list[Block]:
        if phase.context is None or phase.context.mode != "auto":
            return self._explicit_blocks(phase, extra)
        anchors, candidates, selection, room = self._auto_parts(phase, extra)
        return anchors + [_selected_block(c) for c in heuristic_pick(candidates, task, room, selection)]

    def _explicit_blocks(self, phase: Phase, extra: Mapping[str, Any] | None) -> list[Block]:
        blocks: list[Block] = []
        include_input = phase.context.include_input if phase.context is not None else True
        if include_input and self._input:
            blocks.append(Block("Input", self._clipped(self._input, "input"), kind="input"))
        if extra and "item" in extra:
            blocks.append(Block("Item", self._clipped(extra["item"], "item"), anchor=True, kind="item"))
        for name, source in self._sources(phase):
            if name not in self._outputs:
                continue  # not run (yet): Windlass skips it
            if source.condition is not None and not self._holds(source.condition, extra):
                continue
            blocks.extend(self._source_blocks(name, source))
        return blocks

    def _clipped(self, value: Any, what: str) -> str:
        """``value`` as prompt text, cut to ``max_reply_chars`` with a marker: a reply or tool
        result of megabytes must not be paid for again in every later prompt. The stored value
        (``outputs``, state) stays whole for templates and tools."""
        return clip(_to_text(value), self.options.limits.max_reply_chars, what)

    def _sources(self, phase: Phase) -> list[tuple[str, ContextSource]]:
        """``context.from`` resolved like graph.context_sources, each name with its settings."""
        if phase.context is None:
            return []
        names = [p.name for p in self.cascade.phases]
        index = names.index(phase.name) if phase.name in names else len(names)
        excluded = set(phase.context.exclude)
        resolved: dict[str, ContextSource] = {}
        for entry in phase.context.from_:
            keyword = source_name(entry).lower()
            if keyword == "all":
                targets = names[:index]
            elif keyword == "first":
                targets = names[:1] if index > 0 else []
            elif keyword in ("previous", "prev"):
                targets = names[index - 1 : index] if index > 0 else []
            else:
                targets = [source_name(entry)]
            for target in targets:
                if target in excluded or target in resolved:
                    continue
                resolved[target] = (
                    ContextSource.model_validate({"phase": target})
                    if isinstance(entry, str)
                    else entry.model_copy(update={"phase": target})
                )
        return list(resolved.items())

    def _holds(self, condition: str, extra: Mapping[str, Any] | None) -> bool:
        """A ``condition``: a Jinja template rendered to text, or a bare Jinja expression."""
        if is_template(condition):
            return self.render(condition, extra).strip().lower() not in _FALSE
        return bool(self._env.compile_expression(condition)(**self._variables(extra)))

    def _source_blocks(self, name: str, source: ContextSource) -> list[Block]:
        role = source.as_role
        blocks: list[Block] = []
        if "output" in source.include:
            text = self._clipped(self._outputs[name], "output")
            blocks.append(Block(f"Output of {name}", text, role, name))
        if "state" in source.include:
            keys = self._state_keys.get(name, [])
            values = {key: self._state[key] for key in keys if key in self._state}
            if values:
                text = self._clipped(values, "state")
                blocks.append(Block(f"State of {name}", text, role, name, kind="state"))
        if "messages" in source.include:
            messages = _filtered(self._conversations.get(name, []), source.messages_filter)
            if messages:
                lines = "\n\n".join(f"[{m['role']}] {m['content']}" for m in messages)
                text = self._clipped(lines, "conversation")
                blocks.append(Block(f"Conversation of {name}", text, role, name, kind="messages"))
        return blocks  # "images": no phase of ours produces images

    # -- context.mode: auto ----------------------------------------------------------------------
    def _auto_parts(
        self, phase: Phase, extra: Mapping[str, Any] | None
    ) -> tuple[list[Block], list[Candidate], Selection, int]:
        """Anchors, candidate messages, selection settings and the tokens left for picks."""
        inter = self.cascade.auto_context.inter_phase if self.cascade.auto_context else None
        context = phase.context
        anchors_spec = (context.anchors if context else None) or (
            inter.anchors if inter else Anchors.model_validate({})
        )
        selection = (context.selection if context else None) or (
            inter.selection if inter else Selection.model_validate({})
        )
        executed = list(dict.fromkeys(e["phase"] for e in self._lineage_view() if e["phase"] != phase.name))
        anchors: list[Block] = []
        if "input" in anchors_spec.include and self._input:
            anchors.append(Block("Input", self._clipped(self._input, "input"), anchor=True, kind="input"))
        if extra and "item" in extra:
            anchors.append(Block("Item", self._clipped(extra["item"], "item"), anchor=True, kind="item"))
        anchored: set[str] = set()
        for reference in anchors_spec.from_phases:
            for name in _resolve(reference, executed):
                if "output" in anchors_spec.include and name in self._outputs and name not in anchored:
                    anchored.add(name)
                    text = self._clipped(self._outputs[name], "output")
                    anchors.append(Block(f"Output of {name}", text, phase=name, anchor=True))
        if "errors" in anchors_spec.include:
            errors = [
                m for m in self._history if m.get("phase") in executed and mentions_error(str(m["content"]))
            ]
            for message in errors[-5:]:
                anchors.append(Block(f"Error in {message['phase']}", str(message["content"]), anchor=True))
        shown = {block.text for block in anchors}
        candidates = [c for c in candidates_of(self._history, set(executed)) if c.content not in shown]
        room = max(0, selection.max_tokens - sum(block.tokens for block in anchors))
        return anchors, candidates, selection, room

    async def _llm_pick(
        self, phase: Phase, candidates: list[Candidate], task: str, room: int
    ) -> list[Candidate] | None:
        """One guarded, counted call that picks candidates by id; None (heuristic) if it fails."""
        from pydantic import BaseModel

        class Pick(BaseModel):
            selected: list[str]

        name = self._model_name(phase)
        menu = pick_menu(candidates, task, room)
        instructions = "You choose which earlier messages another model needs. Answer with ids only."
        try:
            result = await self._ask(
                name, instructions, menu, phase=phase.name, label=f"{phase.name}:context", output_type=Pick
            )
        except BudgetExceeded:
            raise
        except Exception as err:
            self._emit(f"phase {phase.name}: context pick failed ({_describe(err)}); using the heuristic")
            return None
        wanted = {ident.strip("[] ") for ident in result.output.selected}
        chosen, used = [], 0
        for candidate in candidates:
            if candidate.ident in wanted and used + candidate.tokens <= room:
                chosen.append(candidate)
                used += candidate.tokens
        return chosen

    # -- token_budget ----------------------------------------------------------------------------
    async def _fit_budget(self, phase: Phase, instructions: str, blocks: list[Block]) -> list[Block]:
        budget = self.cascade.token_budget
        if budget is None or budget.strategy != "summarize":
            return self._fit_budget_now(phase, instructions, blocks)
        check = check_budget(budget, phase.name, estimate_tokens(instructions), blocks)
        if not check.over:
            return self._fit_budget_now(phase, instructions, blocks)
        room = check.limit - estimate_tokens(instructions)
        kept, dropped = sliding_window(blocks, room)
        left = room - sum(block.tokens for block in kept)
        summary = await self._summarize(phase, dropped, left) if dropped and left > 20 else None
        if summary is not None:
            kept = [Block("Summary of earlier context", summary, kind="summary"), *kept]
        self._emit(
            f"phase {phase.name}: context of ~{check.used} tokens over token_budget {check.limit}; "
            f"summarized {len(dropped)} block(s)" + ("" if summary is not None else " (failed: dropped)")
        )
        return self._fit_budget_now(phase, instructions, kept)

    def _fit_budget_now(self, phase: Phase, instructions: str, blocks: list[Block]) -> list[Block]:
        budget = self.cascade.token_budget
        if budget is None:
            return blocks
        check = check_budget(budget, phase.name, estimate_tokens(instructions), blocks)
        if not check.over:
            if check.warning:
                self._emit(f"phase {phase.name}: context uses ~{check.used} of {check.limit} budgeted tokens")
            return blocks
        if budget.strategy == "fail":
            raise PhaseFailed(
                phase.name,
                f"context of ~{check.used} tokens exceeds token_budget ({check.limit} = max_total - "
                "reserve_for_output) and token_budget.strategy is 'fail'",
            )
        room = check.limit - estimate_tokens(instructions)
        fit = prune_oldest if budget.strategy == "prune_oldest" else sliding_window
        kept, dropped = fit(blocks, room)
        after = estimate_tokens(instructions) + sum(block.tokens for block in kept)
        self._emit(
            f"phase {phase.name}: context of ~{check.used} tokens over token_budget {check.limit}; "
            f"{budget.strategy} dropped {len(dropped)} block(s), ~{after} left"
        )
        return kept

    async def _summarize(self, phase: Phase, dropped: list[Block], room: int) -> str | None:

        budget = self.cascade.token_budget
        settings = (budget.summarizer if budget else None) or {}
        name = settings.get("model") or self._model_name(phase)
        target = min(int(settings.get("target_size", 2000)), room)
        request = summary_request(dropped, target)
        instructions = "You condense context for another model. Be brief and factual."
        try:
            result = await self._ask(
                name, instructions, request, phase=phase.name, label=f"{phase.name}:summarize"
            )
        except BudgetExceeded:
            raise
        except Exception as err:
            self._emit(f"phase {phase.name}: context summary failed ({_describe(err)})")
            return None
        return str(result.output)[: max(0, room) * 4]

    # -- what a finished phase leaves ------------------------------------------------------------
    def _phase_started(self, phase: Phase) -> None:
        self._conversations.pop(phase.name, None)
        self._snapshots[phase.name] = {"state": dict(self._state), "finished": len(self._lineage)}

    async def _phase_finished(self, phase: Phase, output: Any) -> None:
        """Record the phase in ``lineage``/``history``, its state keys and conversation; save it to
        the memory bank; start its ``on_end`` background cascades."""
        snapshot = self._snapshots.pop(phase.name, {"state": {}, "finished": len(self._lineage)})
        before, missing = snapshot["state"], object()
        # Keys that changed while it ran, less those of phases that finished meanwhile (parallel).
        others = {
            k for e in self._lineage[snapshot["finished"] :] for k in self._state_keys.get(e["phase"], [])
        }
        others |= {f"output_{e['phase']}" for e in self._lineage[snapshot["finished"] :]}
        self._state_keys[phase.name] = [
            k for k, v in self._state.items() if before.get(k, missing) is not v and k not in others
        ]
        conversation = self._conversations.get(phase.name) or [
            {"role": "assistant" if phase.kind == "llm" else "tool", "content": _to_text(output)}
        ]
        conversation = [
            {**message, "content": str(message.get("content", ""))[:MESSAGE_CHARS]}
            for message in conversation[-CONVERSATION_LIMIT:]
        ]
        self._conversations[phase.name] = conversation
        self._lineage.append({"phase": phase.name, "output": output})
        self._history.extend({**message, "phase": phase.name} for message in conversation)
        del self._history[:-HISTORY_LIMIT]
        await self._remember(phase, conversation)
        if phase.kind == "llm":
            self._start_async_cascades(phase, "on_end")


def _resolve(reference: str, executed: list[str]) -> list[str]:
    keyword = reference.lower()
    if keyword in ("previous", "prev"):
        return executed[-1:]
    if keyword == "first":
        return executed[:1]
    if keyword == "all":
        return list(executed)
    return [reference] if reference in executed else []


def _selected_block(candidate: Candidate) -> Block:
    title = f"Earlier message ({candidate.role} in {candidate.phase})"
    return Block(title, candidate.content, phase=candidate.phase, kind="selected")


def _filtered(messages: list[dict[str, Any]], how: str) -> list[dict[str, Any]]:
    """Windlass ``messages_filter``: all, assistant_only, or last_turn (last user -> assistant)."""
    if how == "assistant_only":
        return [m for m in messages if m["role"] == "assistant"]
    if how == "last_turn":
        turn = [m for m in messages if m["role"] in ("user", "assistant", "tool")]
        last = max((i for i, m in enumerate(turn) if m["role"] == "assistant"), default=None)
        if last is None:
            return []
        start = max((i for i, m in enumerate(turn[:last]) if m["role"] == "user"), default=last)
        return turn[start : last + 1]
    return list(messages)
