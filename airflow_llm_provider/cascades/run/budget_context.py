"""Pure helpers of the context an LLM phase sees: context blocks, Windlass ``token_budget``
strategies, the heuristic of ``context.mode: auto`` and the per-turn history processor of
``intra_context``. No runner state here: :mod:`~airflow_llm_provider.cascades.run.context` feeds
them and makes the LLM calls (summaries, picks)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from airflow_llm_provider.cascades.memory import keywords
from airflow_llm_provider.cascades.spec import IntraContext, Selection, TokenBudget
from airflow_llm_provider.cascades.usage import estimate_tokens

ERROR_WORDS = ("error", "exception", "failed", "failure", "traceback")
REASONING_LIMIT = 2000
"""Characters of an old text reply kept by ``intra_context`` (Windlass truncates at 2000)."""


@dataclass(frozen=True)
class Block:
    """One titled piece of a phase's prompt. ``anchor`` blocks (the task itself: the map item,
    auto-context anchors) are never dropped to fit a token budget."""

    title: str
    text: str
    role: Literal["user", "system"] = "user"
    phase: str | None = None
    anchor: bool = False
    kind: str = "output"

    def render(self) -> str:
        return f"## {self.title}\n{self.text}"

    @property
    def tokens(self) -> int:
        return estimate_tokens(self.render())


def join(blocks: Sequence[Block], role: str) -> str:
    return "\n\n".join(block.render() for block in blocks if block.role == role)


def mentions_error(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in ERROR_WORDS)


# -- token_budget -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetCheck:
    used: int
    limit: int
    warning: bool
    over: bool


def check_budget(budget: TokenBudget, phase: str, fixed_tokens: int, blocks: Sequence[Block]) -> BudgetCheck:
    """The prompt's estimated size against ``max_total - reserve_for_output`` (a phase override
    replaces ``max_total`` for that phase)."""
    total = (budget.phase_overrides or {}).get(phase, budget.max_total)
    limit = max(0, total - budget.reserve_for_output)
    used = fixed_tokens + sum(block.tokens for block in blocks)
    return BudgetCheck(used, limit, used > limit * budget.warning_threshold, used > limit)


def sliding_window(blocks: Sequence[Block], room: int) -> tuple[list[Block], list[Block]]:
    """Windlass ``sliding_window``: the newest blocks that fit, stopping at the first that does not
    (anchors always stay). Returns ``(kept, dropped)`` in their original order."""
    left = room - sum(block.tokens for block in blocks if block.anchor)
    keep: set[int] = {i for i, block in enumerate(blocks) if block.anchor}
    for index in range(len(blocks) - 1, -1, -1):
        block = blocks[index]
        if block.anchor:
            continue
        if block.tokens > left:
            break
        keep.add(index)
        left -= block.tokens
    return _split(blocks, keep)


def prune_oldest(blocks: Sequence[Block], room: int) -> tuple[list[Block], list[Block]]:
    """Windlass ``prune_oldest``: drop the oldest blocks until the rest fits, sparing anchors,
    blocks that mention errors and the newest block."""
    keep = set(range(len(blocks)))
    used = sum(block.tokens for block in blocks)
    for index, block in enumerate(blocks):
        if used <= room:
            break
        if block.anchor or mentions_error(block.text) or index == len(blocks) - 1:
            continue
        keep.discard(index)
        used -= block.tokens
    return _split(blocks, keep)


def _split(blocks: Sequence[Block], keep: set[int]) -> tuple[list[Block], list[Block]]:
    return (
        [b for i, b in enumerate(blocks) if i in keep],
        [b for i, b in enumerate(blocks) if i not in keep],
    )


def summary_request(dropped: Sequence[Block], target_tokens: int) -> str:
    """What the summarizer is asked (our wording): the blocks that did not fit."""
    listing = "\n\n".join(block.render()[:4000] for block in dropped)
    return (
        f"Condense the context below into at most about {target_tokens} tokens. Keep decisions, "
        f"findings, numbers, names and errors; drop pleasantries and repetition.\n\n{listing}"
    )


# -- context.mode: auto ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A message of an earlier phase that auto mode may bring in."""

    ident: str
    phase: str
    role: str
    content: str
    position: int

    @property
    def tokens(self) -> int:
        return estimate_tokens(self.content) + 4


def candidates_of(history: Sequence[dict[str, Any]], phases: set[str]) -> list[Candidate]:
    """The run's messages from ``phases`` (system prompts left out: they are the other phase's
    instructions, not its findings)."""
    found: list[Candidate] = []
    for position, message in enumerate(history):
        if message.get("phase") not in phases or message.get("role") == "system":
            continue
        content = str(message.get("content") or "")
        if not content.strip():
            continue
        ident = hashlib.sha256(f"{position}:{content}".encode()).hexdigest()[:8]
        found.append(Candidate(ident, str(message["phase"]), str(message["role"]), content, position))
    return found


def heuristic_pick(
    candidates: Sequence[Candidate], task: str, budget: int, selection: Selection
) -> list[Candidate]:
    """Windlass's heuristic: keyword overlap with the task, recency, assistant messages first;
    taken by score while they fit ``budget`` tokens and ``max_messages``. Returned in run order."""
    wanted = keywords(task)
    count = len(candidates)
    scored: list[tuple[float, Candidate]] = []
    for rank, candidate in enumerate(candidates):
        score = len(wanted & keywords(candidate.content)) * selection.keyword_weight * 10
        score += (rank + 1) / count * selection.recency_weight * 50  # newer within this run
        if candidate.role == "assistant":
            score += 5
        scored.append((score, candidate))
    scored.sort(key=lambda item: (-item[0], -item[1].position))
    chosen: list[Candidate] = []
    used = 0
    for _, candidate in scored:
        if len(chosen) >= selection.max_messages:
            break
        if used + candidate.tokens > budget:
            continue
        chosen.append(candidate)
        used += candidate.tokens
    return sorted(chosen, key=lambda c: c.position)


def pick_menu(candidates: Sequence[Candidate], task: str, budget: int) -> str:
    """The cheap selector call's prompt (our wording): a short line per candidate."""
    lines = [
        f"[{c.ident}] {c.role} in {c.phase} (~{c.tokens} tokens): {c.content[:150].replace(chr(10), ' ')}"
        for c in candidates[:100]
    ]
    return (
        f"A model is about to work on this task:\n{task[:1000]}\n\nEarlier messages, by id:\n"
        + "\n".join(lines)
        + f"\n\nChoose the ids worth showing it, within about {budget} tokens in total."
    )


# -- intra_context ----------------------------------------------------------------------------------


def intra_processor(config: IntraContext) -> Any:
    """A pydantic-ai history processor: within one phase's turns, a tool result the model has
    already answered ``mask_observations_after`` times (at least once) and at least
    ``min_masked_size`` characters long becomes a short placeholder (results that mention errors
    stay when ``preserve_errors``); text replies ``window`` or more answers old are cut to 2000
    characters (``preserve_reasoning``; without it they become a placeholder). The newest tool
    results are never masked: the model has not read them yet."""
    from pydantic_ai import messages as m

    # Plain annotations: pydantic-ai inspects them at run time, and `m` is a local import.
    def process(messages: list[Any]) -> list[Any]:
        if not config.enabled:
            return messages
        responses = [i for i, message in enumerate(messages) if isinstance(message, m.ModelResponse)]
        processed: list[Any] = []
        for index, message in enumerate(messages):
            age = sum(1 for r in responses if r > index)  # model answers since this message
            if isinstance(message, m.ModelRequest) and age >= max(1, config.mask_observations_after):
                parts = [_masked_return(part, config) for part in message.parts]
                message = replace(message, parts=parts)
            elif isinstance(message, m.ModelResponse) and age >= config.window:
                message = replace(message, parts=[_old_reply(part, config) for part in message.parts])
            processed.append(message)
        return processed

    return process


def _masked_return(part: Any, config: IntraContext) -> Any:
    from pydantic_ai import messages as m

    if not isinstance(part, m.ToolReturnPart):
        return part
    content = part.model_response_str()
    if len(content) < config.min_masked_size or (config.preserve_errors and mentions_error(content)):
        return part
    digest = hashlib.sha256(content.encode()).hexdigest()[:8]
    return replace(part, content=f"[{part.tool_name} result hidden: {len(content)} characters, ref {digest}]")


def _old_reply(part: Any, config: IntraContext) -> Any:
    from pydantic_ai import messages as m

    if not isinstance(part, m.TextPart) or len(part.content) <= REASONING_LIMIT:
        return part
    if config.preserve_reasoning:
        return replace(part, content=part.content[:REASONING_LIMIT] + "\n[... cut to save context ...]")
    return replace(part, content=f"[earlier reply of {len(part.content)} characters hidden]")
