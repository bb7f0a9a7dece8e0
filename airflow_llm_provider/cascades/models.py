"""Model ids as cascades write them: pydantic-ai's ``provider:model`` and Windlass's
``provider/model[:variant][::reasoning[::exclude]]`` (OpenRouter ids with a reasoning suffix).

Windlass sends its ids to OpenRouter as they are, and the reasoning suffix as OpenRouter's
``reasoning`` request field. We do the same through the cascade's connection: the id (without
the suffix) is the model name on that connection, and the suffix becomes ``reasoning`` in the
request body, unless ``[llm_provider] model_map`` maps the id to another model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

EFFORT_LEVELS = frozenset({"xhigh", "high", "medium", "low", "minimal", "none"})
ENABLE_WORDS = frozenset({"on", "true", "auto", "enabled"})
_EFFORT_BUDGET = re.compile(r"^([a-z]+)\((\d+)\)$")


@dataclass(frozen=True)
class Reasoning:
    """OpenRouter's ``reasoning`` request field, as Windlass builds it from the suffix."""

    effort: str | None = None
    max_tokens: int | None = None
    exclude: bool = False

    def request_field(self) -> dict[str, Any]:
        """OpenRouter accepts one of effort and max_tokens; the budget wins (Windlass's rule)."""
        field: dict[str, Any] = {}
        if self.max_tokens is not None:
            field["max_tokens"] = self.max_tokens
        elif self.effort is not None:
            field["effort"] = self.effort
        else:
            field["enabled"] = True
        if self.exclude:
            field["exclude"] = True
        return field


@dataclass(frozen=True)
class ModelId:
    """A model id split into the name sent to the connection and the reasoning settings."""

    name: str
    reasoning: Reasoning | None = None

    @property
    def is_windlass(self) -> bool:
        """``provider/model`` (OpenRouter style) rather than pydantic-ai's ``provider:model``."""
        return is_windlass_id(self.name)

    def model_settings(self) -> dict[str, Any]:
        """Per-request settings this id asks for (the ``reasoning`` body field)."""
        if self.reasoning is None:
            return {}
        return {"extra_body": {"reasoning": self.reasoning.request_field()}}


def is_windlass_id(name: str) -> bool:
    slash, colon = name.find("/"), name.find(":")
    return slash > 0 and (colon == -1 or slash < colon)


def parse_model_id(text: str) -> ModelId:
    """Split ``text``; raises ValueError naming the part of a reasoning suffix it cannot read."""
    name, *suffixes = text.strip().split("::")
    if not name:
        raise ValueError(f"model id {text!r} has no model before '::'")
    if not suffixes:
        return ModelId(name)
    effort: str | None = None
    budget: int | None = None
    exclude = False
    for index, part in enumerate(suffixes):
        word = part.strip().lower()
        if word == "exclude" and index > 0:
            exclude = True
        elif index > 0:
            raise ValueError(f"model id {text!r}: unknown reasoning flag {part!r} (known: exclude)")
        elif word.isdigit():
            budget = int(word)
        elif word in EFFORT_LEVELS:
            effort = word
        elif word in ENABLE_WORDS:
            pass
        elif (match := _EFFORT_BUDGET.match(word)) and match.group(1) in EFFORT_LEVELS:
            effort, budget = match.group(1), int(match.group(2))
        else:
            raise ValueError(
                f"model id {text!r}: reasoning {part!r} is not an effort "
                f"({', '.join(sorted(EFFORT_LEVELS))}), a token budget, effort(budget) or on"
            )
    return ModelId(name, Reasoning(effort=effort, max_tokens=budget, exclude=exclude))
