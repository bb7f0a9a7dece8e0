"""Windlass's Quartermaster (``tackle: manifest``): before an LLM phase runs, a selector model
sees the catalogue of tools this run could offer and names the ones the phase needs; the phase
then runs with exactly those.

The catalogue is what a phase could name in ``tackle``: the registered tools and the cascades on
the tool path that take inputs (Windlass lists a cascade as a tool only when it has an
``inputs_schema``), the running cascade itself left out. Past ``manifest_limit`` entries, Windlass
pre-filters by embedding similarity to the phase's instructions; we rank by the words the entry
shares with the instructions instead (no embedding model here). ``manifest_context: current``
shows the selector the phase's instructions and the run's input; ``full`` adds the run's recent
messages. The choice is made once per visit of the phase (attempts and soundings share it).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_llm_provider.cascades.references import (
    cascade_tool_names,
    find_cascade_tool,
)
from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.spec import Phase

SELECTOR_INSTRUCTIONS = (
    "You equip one step of an automated workflow with tools. From the catalogue, name the tools "
    "the step will likely need, and no others. Answer with the list of tool names (an empty list "
    "when the step needs no tool)."
)
FULL_CONTEXT_MESSAGES = 20
"""``manifest_context: full``: the run's last messages shown to the selector (as Windlass)."""
_PREVIEW = 300
_WORD = re.compile(r"[a-z0-9]{3,}")
_NAMES = re.compile(r"\[.*?\]", re.DOTALL)


@dataclass(frozen=True)
class CatalogueEntry:
    """One tool the selector may choose."""

    name: str
    kind: str  # "function" or "cascade"
    description: str
    inputs: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        text = f"- {self.name} ({self.kind}): {self.description or 'no description'}"
        if self.inputs:
            text += "\n  inputs: " + "; ".join(f"{k}: {v}" for k, v in self.inputs.items())
        return text


class ManifestMixin(RunnerBase):
    """Chooses a ``tackle: manifest`` phase's tools with one guarded selector call."""

    _manifest_choices: dict[tuple[str, int], asyncio.Task[list[str]]] | None = None

    def _catalogue(self) -> dict[str, CatalogueEntry]:
        entries: dict[str, CatalogueEntry] = {}
        for name in self.tools.names():
            function = self.tools.resolve(name)
            entries[name] = CatalogueEntry(
                name, "function", _first_paragraph(function), _parameters(function)
            )
        folders = self._tool_folders()
        for name in sorted(cascade_tool_names(folders)):
            tool = find_cascade_tool(name, folders)
            if tool is None or name in entries or name == self.cascade.cascade_id or not tool.inputs:
                continue
            entries[name] = CatalogueEntry(name, "cascade", tool.description.strip(), dict(tool.inputs))
        return entries

    async def _manifest_tools(self, phase: Phase, system: str) -> list[str]:
        """The tool names chosen for this visit of ``phase`` (one selector call per visit)."""
        if self._manifest_choices is None:
            self._manifest_choices = {}
        key = (phase.name, self._visits.get(phase.name, 1))
        task = self._manifest_choices.get(key)
        if task is None:
            task = self._manifest_choices[key] = asyncio.ensure_future(self._select_tools(phase, system))
        return await asyncio.shield(task)

    async def _select_tools(self, phase: Phase, system: str) -> list[str]:
        from pydantic import BaseModel
        from pydantic_ai.usage import UsageLimits

        class ToolChoice(BaseModel):
            tools: list[str]

        catalogue = self._catalogue()
        shown = _within_limit(catalogue, system or phase.instructions or "", phase.manifest_limit)
        prompt = self._selector_prompt(phase, system, shown)
        name = self._model_name(phase)
        self._emit(f"phase {phase.name}: manifest: choosing tools among {len(shown)} of {len(catalogue)}")
        result = await self._ask(
            name,
            SELECTOR_INSTRUCTIONS,
            prompt,
            phase=phase.name,
            label=f"{phase.name}:manifest",
            output_type=[ToolChoice, str],
            usage_limits=UsageLimits(request_limit=3),
        )
        answer = result.output
        names = answer.tools if isinstance(answer, ToolChoice) else _names_in_text(str(answer))
        chosen = list(dict.fromkeys(n for n in names if n in shown))
        ignored = [n for n in names if n not in shown]
        self._emit(
            f"phase {phase.name}: manifest chose {', '.join(chosen) or 'no tools'}"
            + (f" (ignored unknown: {', '.join(map(str, ignored))})" if ignored else "")
        )
        self._state[f"manifest_{phase.name}"] = chosen
        return chosen

    def _selector_prompt(self, phase: Phase, system: str, shown: dict[str, CatalogueEntry]) -> str:
        catalogue = "\n".join(entry.line() for entry in shown.values()) or "(no tools available)"
        parts = [f"## Tool catalogue\n{catalogue}", f"## The step's instructions\n{system}"]
        parts.append(f"## The run's input\n{json.dumps(self._input, default=str, ensure_ascii=False)}")
        if phase.manifest_context == "full":
            recent = self._history[-FULL_CONTEXT_MESSAGES:]
            lines = [
                f"{m.get('role', '?')} ({m.get('phase', '?')}): {str(m.get('content', ''))[:_PREVIEW]}"
                for m in recent
            ]
            parts.append("## The run so far\n" + ("\n".join(lines) or "(nothing yet)"))
        return "\n\n".join(parts)


def _within_limit(
    catalogue: dict[str, CatalogueEntry], instructions: str, limit: int
) -> dict[str, CatalogueEntry]:
    """At most ``limit`` entries: those sharing the most words with the instructions first."""
    if len(catalogue) <= limit:
        return catalogue
    words = set(_WORD.findall(instructions.lower()))

    def overlap(entry: CatalogueEntry) -> int:
        text = f"{entry.name.replace('_', ' ')} {entry.description} {' '.join(entry.inputs)}".lower()
        return len(words & set(_WORD.findall(text)))

    ranked = sorted(catalogue.values(), key=overlap, reverse=True)[:limit]  # stable: ties keep order
    return {entry.name: entry for entry in ranked}


def _names_in_text(text: str) -> list[str]:
    """A JSON list of names in a text answer (Windlass's selector answers so); else nothing."""
    for match in _NAMES.finditer(text):
        try:
            value = json.loads(match.group(0))
        except ValueError:
            continue
        if isinstance(value, list):
            return [str(v) for v in value if isinstance(v, str)]
    return []


def _first_paragraph(function: Callable[..., Any]) -> str:
    doc = inspect.getdoc(function) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def _parameters(function: Callable[..., Any]) -> dict[str, str]:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return {}
    out: dict[str, str] = {}
    for name, parameter in signature.parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        annotation = parameter.annotation
        kind = (
            getattr(annotation, "__name__", str(annotation)) if annotation is not parameter.empty else "any"
        )
        out[name] = kind if parameter.default is parameter.empty else f"{kind}, optional"
    return out
