"""Semantic checks on a structurally valid cascade: references, templates, schemas, cycles.

Each check returns ``(field path, message)`` so the loader can attach the file line.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Any

from airflow_llm_provider.cascades.errors import FieldPath
from airflow_llm_provider.cascades.graph import CONTEXT_KEYWORDS, source_name, templated_fields
from airflow_llm_provider.cascades.limits import Limits, configured_limits
from airflow_llm_provider.cascades.refused import UNREGISTERED_TOOLS
from airflow_llm_provider.cascades.spec import (
    AUTO_FIX,
    END,
    Cascade,
    Phase,
    PolyglotValidator,
    Soundings,
    ValidatorRef,
)
from airflow_llm_provider.cascades.templates import (
    AIRFLOW_VARIABLES,
    MAP_VARIABLES,
    RETRY_VARIABLES,
    TURN_VARIABLES,
    WINDLASS_VARIABLES,
    referenced_phases,
    undeclared_variables,
)

Issue = tuple[FieldPath, str]

LLM_ONLY = (
    "model",
    "tackle",
    "use_native_tools",
    "output_schema",
    "rules",
    "soundings",
    "wards",
    "output_extraction",
    "intra_context",
)
TOOL_ONLY = ("inputs", "routing", "retry")
"""(``timeout`` applies to both kinds: the tool call's, or the whole LLM phase's wall clock.)"""
IMPLEMENTED_POLYGLOT: frozenset[str] = frozenset({"python", "bash", "javascript", "sql", "tool"})
"""Languages of inline validators the engine runs (the others are refused by name)."""
_POLYGLOT_WHY = {
    "clojure": " (no Clojure runtime is run by the validator sandbox)",
}
_PYTHON_REF = re.compile(r"^python:[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_TOOL_NAME = re.compile(r"^[A-Za-z_][\w.-]*$")


def semantic_issues(cascade: Cascade, limits: Limits | None = None) -> list[Issue]:
    """Every semantic problem of ``cascade`` (an empty list when it is valid) under ``limits``
    (default: the configured ones)."""
    names = [phase.name for phase in cascade.phases]
    known = set(names)
    issues: list[Issue] = []
    seen: set[str] = set()
    for index, phase in enumerate(cascade.phases):
        at: FieldPath = ("phases", index)
        if phase.name in seen:
            issues.append(((*at, "name"), f"duplicate phase name '{phase.name}'"))
        seen.add(phase.name)
        if phase.name == END:
            issues.append(((*at, "name"), f"'{END}' is reserved: it is the target that ends the cascade"))
        issues.extend(_phase_kind(phase, at))
        issues.extend(_phase_references(phase, at, known))
        issues.extend(_phase_templates(phase, at, known))
        issues.extend(_phase_validators(phase, at))
        issues.extend(_interactive_pareto(phase, at))
        if phase.output_schema is not None:
            issues.extend(_json_schema(phase.output_schema, (*at, "output_schema")))
    for name, spec in cascade.validators.items():
        issues.extend(_template(spec.instructions, ("validators", name, "instructions"), known))
    issues.extend(_semantic_selection(cascade))
    issues.extend(_soundings_limits(cascade, limits or configured_limits()))
    return issues


def _soundings_limits(cascade: Cascade, limits: Limits) -> Iterator[Issue]:
    """Literal soundings counts over ``max_soundings`` (templated ones are checked when they
    render, before anything is allocated: run/soundings.py, run/cascade_soundings.py)."""
    most = limits.max_soundings
    where: list[tuple[FieldPath, Soundings | None]] = [(("soundings",), cascade.soundings)]
    where += [(("phases", i, "soundings"), phase.soundings) for i, phase in enumerate(cascade.phases)]
    for at, soundings in where:
        if soundings is None:
            continue
        counts: list[tuple[FieldPath, int, str]] = []
        if isinstance(soundings.factor, int):
            counts.append(((*at, "factor"), soundings.factor, "soundings"))
        if isinstance(soundings.models, dict):
            total = sum(config.factor for config in soundings.models.values())
            counts.append(((*at, "models"), total, "soundings (the sum of the models' factors)"))
        if soundings.reforge is not None:
            counts.append(((*at, "reforge", "steps"), soundings.reforge.steps, "reforge steps"))
            counts.append(
                ((*at, "reforge", "factor_per_step"), soundings.reforge.factor_per_step, "soundings per step")
            )
        for path, count, what in counts:
            if count > most:
                setting = "[llm_provider] max_soundings, AIRFLOW__LLM_PROVIDER__MAX_SOUNDINGS"
                yield path, f"{count:,} {what}, over the limit of {most} ({setting})"


SEMANTIC_SELECTION = (
    "context `selection.strategy: semantic` (Windlass embedding search over its context cards) is "
    "not supported yet: no embedding model is configured here; use `heuristic`, `llm` or `hybrid`"
)


def _semantic_selection(cascade: Cascade) -> Iterator[Issue]:
    """The one auto-context strategy the engine does not run (context.py runs the others)."""
    inter = cascade.auto_context.inter_phase if cascade.auto_context else None
    if inter is not None and inter.selection.strategy == "semantic":
        yield ("auto_context", "inter_phase", "selection", "strategy"), SEMANTIC_SELECTION
    for index, phase in enumerate(cascade.phases):
        selection = phase.context.selection if phase.context is not None else None
        if selection is not None and selection.strategy == "semantic":
            yield ("phases", index, "context", "selection", "strategy"), SEMANTIC_SELECTION


def semantic_warnings(cascade: Cascade) -> list[Issue]:
    """What runs, but maybe not as the author thinks: template names nothing provides, ``previous``
    on the first phase (Windlass resolves it to nothing)."""
    warnings: list[Issue] = []
    for index, phase in enumerate(cascade.phases):
        at: FieldPath = ("phases", index)
        if phase.context is not None and index == 0:
            for position, source in enumerate(phase.context.from_):
                if source_name(source).lower() in ("previous", "prev"):
                    warnings.append(
                        (
                            (*at, "context", "from", position),
                            "the first phase has no previous phase: no context",
                        )
                    )
        provided = set(WINDLASS_VARIABLES) | set(AIRFLOW_VARIABLES)
        if phase.map_over is not None:
            provided |= MAP_VARIABLES
        for path, text in templated_fields(phase, at):
            extra = (
                RETRY_VARIABLES
                if "retry_instructions" in path
                else TURN_VARIABLES
                if "turn_prompt" in path
                else frozenset()
            )
            try:
                unknown = undeclared_variables(text) - provided - extra
            except Exception:  # syntax errors are reported by semantic_issues
                continue
            for name in sorted(unknown):
                warnings.append(
                    (path, f"template variable '{name}' is provided by nothing here; it renders empty")
                )
        for position, name in enumerate(phase.tackle):
            if name in UNREGISTERED_TOOLS:
                warnings.append(((*at, "tackle", position), UNREGISTERED_TOOLS[name]))
    return warnings


def _suggest(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown(name: str, known: set[str]) -> str:
    return f"unknown phase '{name}'{_suggest(name, known)}"


def _phase_kind(phase: Phase, at: FieldPath) -> Iterator[Issue]:
    kinds = [key for key in ("instructions", "tool", "for_each_row") if getattr(phase, key) is not None]
    if len(kinds) > 1:
        yield (
            (*at, kinds[1]),
            "a phase sets only one of `instructions`, `tool` or `for_each_row` "
            f"(this one sets {' and '.join(kinds)})",
        )
        return
    if not kinds:
        yield at, "a phase needs `instructions` (LLM phase), `tool` (deterministic) or `for_each_row`"
        return
    given = phase.model_fields_set
    if phase.kind == "tool":
        for key in LLM_ONLY:
            if key in given:
                yield (*at, key), f"`{key}` applies to LLM phases only (this phase runs a `tool`)"
        yield from _tool_reference(phase.tool or "", (*at, "tool"))
        if phase.on_error == AUTO_FIX or (isinstance(phase.on_error, dict) and AUTO_FIX in phase.on_error):
            yield (*at, "on_error"), "`on_error: auto_fix` (Windlass LLM code repair) is not supported yet"
        elif (inline := phase.on_error_inline) is not None:
            yield from _inline_fallback(phase, inline, (*at, "on_error"))
    elif phase.kind == "llm":
        for key in (*TOOL_ONLY, "on_error"):
            if key in given:
                yield (*at, key), f"`{key}` applies to `tool` phases only (this is an LLM phase)"
        for position, name in enumerate(phase.tackle):
            if name.startswith("cascade:"):
                yield from _cascade_reference(name, (*at, "tackle", position))


def _inline_fallback(phase: Phase, body: dict[str, object], at: FieldPath) -> Iterator[Issue]:
    """``on_error: {instructions: ...}``: a nameless LLM phase run when the tool fails."""
    from pydantic import ValidationError

    if "instructions" not in body:
        yield at, "an inline `on_error` fallback is an LLM phase: it needs `instructions`"
        return
    try:
        fallback = Phase.model_validate({"name": f"{phase.name}_on_error", **body})
    except ValidationError as err:
        for error in err.errors(include_url=False):
            yield (*at, *error.get("loc", ())), str(error.get("msg", "invalid value"))
        return
    for key in ("handoffs", "routing", "soundings", "sub_cascades", "async_cascades"):
        if key in fallback.model_fields_set:
            yield (*at, key), f"`{key}` is not available in an inline `on_error` fallback"


def _tool_reference(tool: str, at: FieldPath) -> Iterator[Issue]:
    if tool.startswith("python:"):
        if not _PYTHON_REF.match(tool):
            yield at, f"'{tool}' is not of the form python:package.module.function"
    elif tool.startswith("sql:"):
        if not tool[4:].strip():
            yield at, "`sql:` needs a file, e.g. sql:queries/report.sql"
    elif tool.startswith("cascade:"):
        yield from _cascade_reference(tool, at)
    elif tool.startswith("shell:"):
        if not tool[len("shell:") :].strip():
            yield at, "`shell:` needs a script file, e.g. shell:scripts/fetch.sh"
    elif not _TOOL_NAME.match(tool):
        yield at, f"'{tool}' is not a tool name, python:module.func, sql:file.sql or cascade:file.yaml"


def _cascade_reference(reference: str, at: FieldPath) -> Iterator[Issue]:
    path = reference[len("cascade:") :].strip()
    if not path.lower().endswith((".yaml", ".yml", ".json")):
        yield at, f"'{reference}' is not of the form cascade:path/to/child.yaml (a YAML or JSON file)"


def _phase_references(phase: Phase, at: FieldPath, known: set[str]) -> Iterator[Issue]:
    for position, target in enumerate(phase.handoff_targets):
        if target != END and target not in known:
            yield (*at, "handoffs", position), _unknown(target, known)
    if phase.context is not None:
        for position, source in enumerate(phase.context.from_):
            path = (*at, "context", "from", position)
            name = source_name(source)
            if isinstance(source, str) and name.lower() in CONTEXT_KEYWORDS:
                continue
            if name not in known:
                yield (path if isinstance(source, str) else (*path, "phase")), _unknown(name, known)
        for position, name in enumerate(phase.context.exclude):
            if name not in known:
                yield (*at, "context", "exclude", position), _unknown(name, known)
    for route, target in (phase.routing or {}).items():
        if target != END and target not in known:
            yield (*at, "routing", route), _unknown(target, known)
    handler = phase.on_error_target
    if handler is not None:
        if handler not in known:
            yield (*at, "on_error"), _unknown(handler, known)
        elif handler == phase.name:
            yield (*at, "on_error"), "a phase cannot be its own `on_error` handler; use `retry`"
    if phase.map_over is not None:
        source = phase.map_over.split(".", 1)[0]
        if source not in known:
            yield (*at, "map_over"), _unknown(source, known)
        elif source == phase.name:
            yield (*at, "map_over"), "a phase cannot map over its own output"


def _phase_templates(phase: Phase, at: FieldPath, known: set[str]) -> Iterator[Issue]:
    for path, text in templated_fields(phase, at):
        yield from _template(text, path, known)


def _template(text: str, path: FieldPath, known: set[str]) -> Iterator[Issue]:
    from jinja2 import TemplateSyntaxError

    try:
        references = referenced_phases(text)
    except TemplateSyntaxError as exc:
        yield path, f"Jinja syntax error: {exc.message} (template line {exc.lineno})"
        return
    for name in sorted(references - known):
        yield path, f"template reads {_unknown(name, known)}"


INTERACTIVE_PARETO = (
    "`pareto_frontier.policy: interactive` asks a person at the terminal to pick the winner, which "
    "an Airflow task cannot do; use `prefer_cheap`, `prefer_quality` or `balanced`"
)


def _interactive_pareto(phase: Phase, at: FieldPath) -> Iterator[Issue]:
    """The one Pareto policy that needs a human (soundings.py/judging.py run the others)."""
    pareto = phase.soundings.pareto_frontier if phase.soundings is not None else None
    if pareto is not None and pareto.enabled and pareto.policy == "interactive":
        yield (*at, "soundings", "pareto_frontier", "policy"), INTERACTIVE_PARETO


def _phase_validators(phase: Phase, at: FieldPath) -> Iterator[Issue]:
    """Inline validators in languages the engine does not run yet; names are resolved by
    ``references.py``, which knows the tool path."""
    for path, validator in phase_validators(phase, at):
        if isinstance(validator, PolyglotValidator) and validator.language not in IMPLEMENTED_POLYGLOT:
            yield (
                path,
                f"inline `{validator.language}` validators are not supported by airflow-llm-provider yet"
                + _POLYGLOT_WHY.get(validator.language, ""),
            )
    if phase.wards is not None:
        for position, ward in enumerate(phase.wards.pre):
            if ward.mode == "retry":
                yield (*at, "wards", "pre", position, "mode"), "`retry` applies to post wards only"


def phase_validators(phase: Phase, at: FieldPath = ()) -> Iterator[tuple[FieldPath, ValidatorRef]]:
    """Every validator a phase names (loop_until, wards, soundings pre-filter, reforge threshold)."""
    if phase.rules is not None and phase.rules.loop_until is not None:
        yield (*at, "rules", "loop_until"), phase.rules.loop_until
    if phase.wards is not None:
        for when in ("pre", "post"):
            for position, ward in enumerate(getattr(phase.wards, when)):
                yield (*at, "wards", when, position, "validator"), ward.validator
    soundings = phase.soundings
    if soundings is not None:
        if soundings.validator is not None:
            yield (*at, "soundings", "validator"), soundings.validator
        if soundings.reforge is not None and soundings.reforge.threshold is not None:
            yield (
                (*at, "soundings", "reforge", "threshold", "validator"),
                soundings.reforge.threshold.validator,
            )


def _json_schema(schema: dict[str, Any], at: FieldPath) -> Iterator[Issue]:
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        yield (*at, *exc.path), f"invalid JSON Schema: {exc.message}"
