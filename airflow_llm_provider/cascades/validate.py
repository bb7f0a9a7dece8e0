"""Semantic checks on a structurally valid cascade: references, templates, schemas, cycles.

Each check returns ``(field path, message)`` so the loader can attach the file line.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Any

from airflow_llm_provider.cascades.graph import CONTEXT_KEYWORDS, FieldPath, templated_fields
from airflow_llm_provider.cascades.spec import END, Cascade, Phase
from airflow_llm_provider.cascades.templates import referenced_phases

Issue = tuple[FieldPath, str]

LLM_ONLY = ("model", "tackle", "use_native_tools", "output_schema", "rules", "soundings", "wards")
TOOL_ONLY = ("inputs", "routing", "on_error", "retry", "timeout")
_PYTHON_REF = re.compile(r"^python:[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_TOOL_NAME = re.compile(r"^[A-Za-z_][\w.-]*$")


def semantic_issues(cascade: Cascade) -> list[Issue]:
    """Every semantic problem of ``cascade`` (an empty list when it is valid)."""
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
        issues.extend(_phase_references(phase, at, index, known))
        issues.extend(_phase_templates(phase, at, known))
        issues.extend(_phase_validators(phase, at, cascade))
        if phase.output_schema is not None:
            issues.extend(_json_schema(phase.output_schema, (*at, "output_schema")))
    for name, spec in cascade.validators.items():
        issues.extend(_template(spec.instructions, ("validators", name, "instructions"), known))
    if cascade.max_phase_visits is None and len(known) == len(names):
        issues.extend(_unguarded_cycles(cascade))
    return issues


def _suggest(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown(name: str, known: set[str]) -> str:
    return f"unknown phase '{name}'{_suggest(name, known)}"


def _phase_kind(phase: Phase, at: FieldPath) -> Iterator[Issue]:
    if phase.tool is not None and phase.instructions is not None:
        yield (*at, "tool"), "a phase sets either `tool` (deterministic) or `instructions` (LLM), not both"
        return
    if phase.tool is None and phase.instructions is None:
        yield at, "a phase needs `instructions` (LLM phase) or `tool` (deterministic phase)"
        return
    given = phase.model_fields_set
    if phase.kind == "tool":
        for key in LLM_ONLY:
            if key in given:
                yield (*at, key), f"`{key}` applies to LLM phases only (this phase runs a `tool`)"
        yield from _tool_reference(phase.tool or "", (*at, "tool"))
    else:
        for key in TOOL_ONLY:
            if key in given:
                yield (*at, key), f"`{key}` applies to `tool` phases only (this is an LLM phase)"
        if (phase.instructions or "").startswith("@"):
            yield (*at, "instructions"), "instructions from a file (`@path`) are not supported yet"
        for position, name in enumerate(phase.tackle):
            if name == "manifest":
                yield (*at, "tackle", position), "`manifest` tackle (Windlass selector) is not supported yet"
            elif name.startswith("cascade:"):
                yield from _cascade_reference(name, (*at, "tackle", position))


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
        yield at, "`shell:` tools (Windlass) are not supported by airflow-llm-provider yet"
    elif not _TOOL_NAME.match(tool):
        yield at, f"'{tool}' is not a tool name, python:module.func, sql:file.sql or cascade:file.yaml"


def _cascade_reference(reference: str, at: FieldPath) -> Iterator[Issue]:
    path = reference[len("cascade:") :].strip()
    if not path.lower().endswith((".yaml", ".yml", ".json")):
        yield at, f"'{reference}' is not of the form cascade:path/to/child.yaml (a YAML or JSON file)"


def _phase_references(phase: Phase, at: FieldPath, index: int, known: set[str]) -> Iterator[Issue]:
    for position, target in enumerate(phase.handoff_targets):
        if target != END and target not in known:
            yield (*at, "handoffs", position), _unknown(target, known)
    if phase.context is not None:
        for position, source in enumerate(phase.context.from_):
            path = (*at, "context", "from", position)
            if source.lower() in CONTEXT_KEYWORDS:
                if index == 0 and source.lower() in ("previous", "prev"):
                    yield path, "the first phase has no previous phase"
            elif source not in known:
                yield path, _unknown(source, known)
    for route, target in (phase.routing or {}).items():
        if target != END and target not in known:
            yield (*at, "routing", route), _unknown(target, known)
    if phase.on_error is not None:
        if phase.on_error == "auto_fix":
            yield (*at, "on_error"), "`auto_fix` (Windlass LLM repair) is not supported yet"
        elif phase.on_error not in known:
            yield (*at, "on_error"), _unknown(phase.on_error, known)
        elif phase.on_error == phase.name:
            yield (*at, "on_error"), "a phase cannot be its own `on_error` handler; use `retry`"
    if phase.map_over is not None:
        source = phase.map_over.split(".", 1)[0]
        if source not in known:
            yield (*at, "map_over"), _unknown(source, known)
        elif source == phase.name:
            yield (*at, "map_over"), "a phase cannot map over its own output"


def _phase_templates(phase: Phase, at: FieldPath, known: set[str]) -> Iterator[Issue]:
    soundings = phase.soundings
    if soundings is not None:
        active = isinstance(soundings.factor, str) or soundings.factor > 1
        if active and soundings.mode == "evaluate" and not soundings.evaluator_instructions:
            yield (*at, "soundings"), "`evaluator_instructions` is required when soundings evaluate"
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


def _validator_ok(name: str, cascade: Cascade) -> bool:
    return name in cascade.validators or bool(_PYTHON_REF.match(name))


def _phase_validators(phase: Phase, at: FieldPath, cascade: Cascade) -> Iterator[Issue]:
    missing = "validator '{}' is not in `validators:` and not of the form python:module.func"
    loop_until = phase.rules.loop_until if phase.rules is not None else None
    if loop_until is not None and not _validator_ok(loop_until, cascade):
        yield (*at, "rules", "loop_until"), missing.format(loop_until)
    if phase.wards is not None:
        for when in ("pre", "post"):
            for position, ward in enumerate(getattr(phase.wards, when)):
                path = (*at, "wards", when, position)
                if not _validator_ok(ward.validator, cascade):
                    yield (*path, "validator"), missing.format(ward.validator)
                if when == "pre" and ward.mode == "retry":
                    yield (*path, "mode"), "`retry` applies to post wards only"


def _json_schema(schema: dict[str, Any], at: FieldPath) -> Iterator[Issue]:
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        yield (*at, *exc.path), f"invalid JSON Schema: {exc.message}"


def _unguarded_cycles(cascade: Cascade) -> Iterator[Issue]:
    """Back edges of the phase graph (handoffs, routing, on_error, fall-through)."""
    edges: dict[str, list[tuple[str, FieldPath]]] = {}
    phases = cascade.phases
    for index, phase in enumerate(phases):
        at: FieldPath = ("phases", index)
        out = edges.setdefault(phase.name, [])
        out.extend((target, (*at, "handoffs", pos)) for pos, target in enumerate(phase.handoff_targets))
        out.extend((target, (*at, "routing", route)) for route, target in (phase.routing or {}).items())
        if phase.on_error is not None:
            out.append((phase.on_error, (*at, "on_error")))
        if not phase.handoffs and index + 1 < len(phases):
            out.append((phases[index + 1].name, at))
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []
    reported: set[FieldPath] = set()

    def visit(name: str) -> Iterator[Issue]:
        state[name] = 1
        stack.append(name)
        for target, path in edges.get(name, []):
            if target not in edges:
                continue
            if state.get(target) == 1 and path not in reported:
                reported.add(path)
                cycle = [*stack[stack.index(target) :], target]
                yield (
                    path,
                    (f"cycle {' -> '.join(cycle)} has no loop guard; set `max_phase_visits` on the cascade"),
                )
            elif target not in state:
                yield from visit(target)
        stack.pop()
        state[name] = 2

    for phase in phases:
        if phase.name not in state:
            yield from visit(phase.name)
