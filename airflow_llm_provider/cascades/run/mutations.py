"""Prompt mutations of soundings (Windlass's ``mutate``, on by default): sounding 0 keeps the
phase's instructions (the baseline); sounding ``i`` > 0 gets template ``(i - 1) mod n`` of
``mutations:`` (when given) or of the built-in templates of ``mutation_mode``:

- ``rewrite`` (default): an extra LLM call rewrites the rendered instructions as the template
  says; the rewrite replaces them (an empty rewrite keeps the original). Windlass also shows the
  rewriter the winning rewrites of earlier runs; we do not keep a history of winners, so every
  rewrite is a fresh one (Windlass's ``rewrite_free``).
- ``augment``: the template is put before the instructions.
- ``approach``: the template (a thinking strategy) is put after the instructions.

The template texts are ours; Windlass has eight per mode too.
"""

from __future__ import annotations

from airflow_llm_provider.cascades.budget import BudgetExceeded
from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.core import _describe
from airflow_llm_provider.cascades.run.results import PhaseFailed
from airflow_llm_provider.cascades.spec import Phase, Soundings

REWRITE_TEMPLATES = (
    "Rewrite the prompt so that it is more precise: spell out what a complete answer contains.",
    "Rewrite the prompt to be shorter and sharper, keeping every requirement and dropping the rest.",
    "Rewrite the prompt so that it asks for a clear structure in the answer (sections, steps or a "
    "list, whichever fits the task).",
    "Rewrite the prompt so that it names who will read the answer and the tone that suits them.",
    "Rewrite the prompt so that it invites an unusual but sound angle on the task.",
    "Rewrite the prompt to stress correctness: ask for checked facts and clearly stated assumptions.",
    "Rewrite the prompt so that it asks for depth on the most important point rather than breadth.",
    "Rewrite the prompt to add sensible limits (length, format or scope) that make a better answer likely.",
)
AUGMENT_TEMPLATES = (
    "Answer completely: leave no part of the task unaddressed.",
    "Keep the answer short and to the point.",
    "Make the answer concrete, with specific details and examples.",
    "Choose a less obvious way into the task.",
    "Clarity comes first: plain words, short sentences.",
    "Lead with what matters most.",
    "Check the answer for mistakes before giving it.",
    "Give the answer a finished, polished form.",
)
APPROACH_TEMPLATES = (
    "Work from first principles: question the usual assumptions before answering.",
    "Think about who will read the answer and what they need from it.",
    "Commit to a clear position instead of hedging.",
    "Say the most with the fewest words.",
    "Look for what is counterintuitive or easy to miss.",
    "Prefer the simplest solution that fully works.",
    "Consider what could go wrong, and deal with it.",
    "Look past the literal reading of the task to the need behind it.",
)
BUILT_IN_MUTATIONS: dict[str, tuple[str, ...]] = {
    "rewrite": REWRITE_TEMPLATES,
    "augment": AUGMENT_TEMPLATES,
    "approach": APPROACH_TEMPLATES,
}
"""``mutation_mode`` -> its built-in templates."""

REWRITER = (
    "You rewrite prompts written for a language model. Reply with the rewritten prompt only: no "
    "preamble, no explanation, no quotation marks around it."
)


def mutation_of(soundings: Soundings, index: int) -> str | None:
    """The template sounding ``index`` (0-based) uses, or None (the baseline, or ``mutate: false``)."""
    if not soundings.mutate or index == 0:
        return None
    templates = soundings.mutations or BUILT_IN_MUTATIONS[soundings.mutation_mode]
    return templates[(index - 1) % len(templates)] if templates else None


def apply_mutation(mode: str, instructions: str, mutation: str) -> str:
    """``augment``: before the instructions; ``approach``: after them; ``rewrite``: ``mutation``
    is already the rewritten prompt and replaces them."""
    if mode == "rewrite":
        return mutation
    if not instructions:
        return mutation
    if mode == "augment":
        return f"{mutation}\n\n{instructions}"
    return f"{instructions}\n\n{mutation}"


def rewrite_request(instructions: str, template: str) -> str:
    return (
        f"## The prompt\n{instructions}\n\n## How to rewrite it\n{template}\n\n"
        "Keep the task itself unchanged: what it works on, what it must produce and every constraint "
        "it sets. Change only how it is put, as the rewrite instruction asks. The rewritten prompt "
        "must stand on its own."
    )


class MutationsMixin(RunnerBase):
    """Applies a sounding's mutation to its rendered instructions."""

    async def _mutated(self, phase: Phase, instructions: str, index: int) -> str:
        """The instructions of sounding ``index`` after its mutation (if any)."""
        soundings = phase.soundings
        assert soundings is not None
        mutation = mutation_of(soundings, index)
        if mutation is None:
            return instructions
        if soundings.mutation_mode != "rewrite":
            return apply_mutation(soundings.mutation_mode, instructions, mutation)
        if not instructions.strip():
            return instructions  # nothing to rewrite
        rewritten = await self._rewrite(phase, instructions, mutation, index)
        return rewritten or instructions

    async def _rewrite(self, phase: Phase, instructions: str, template: str, index: int) -> str:
        """The rewrite call, counted in the run's usage and budget (label ``<phase>:rewrite``),
        on the phase's model (Windlass rewrites with the cascade's model, not the sounding's). A
        failed call fails this sounding."""

        name = self._model_name(phase)
        request = rewrite_request(instructions, template)
        try:
            result = await self._ask(
                name, REWRITER, request, phase=phase.name, label=f"{phase.name}:rewrite", sounding=index
            )
        except (PhaseFailed, BudgetExceeded):
            raise
        except Exception as err:
            raise PhaseFailed(
                phase.name, f"sounding {index + 1}: prompt rewrite failed: {_describe(err)}"
            ) from err
        return str(result.output).strip()
