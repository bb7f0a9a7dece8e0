"""The phase graph of a cascade: which phases read which, and how control moves between them.

Shared by validation, the in-process runner and the DAG renderer, so all three agree on what
depends on what. Dependencies come from every templated string (via the Jinja AST), from
``context.from`` and from ``map_over``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from airflow_llm_provider.cascades.errors import FieldPath
from airflow_llm_provider.cascades.spec import Cascade, ContextSource, Phase
from airflow_llm_provider.cascades.templates import is_template, reads_state_beyond_outputs, referenced_phases

CONTEXT_KEYWORDS = frozenset({"all", "first", "previous", "prev"})


def strings_in(value: Any, path: FieldPath = ()) -> Iterator[tuple[FieldPath, str]]:
    """Every string inside nested dicts and lists, with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(item, (*path, str(key)))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from strings_in(item, (*path, position))


def templated_fields(phase: Phase, at: FieldPath = ()) -> list[tuple[FieldPath, str]]:
    """The phase's strings that are rendered as Jinja (and hold Jinja markup), with their paths."""
    texts: list[tuple[FieldPath, str]] = []
    if phase.instructions is not None and not phase.instructions.startswith("@"):
        texts.append(((*at, "instructions"), phase.instructions))
    if phase.rules is not None:
        for key in ("retry_instructions", "turn_prompt", "loop_until_prompt"):
            if (value := getattr(phase.rules, key)) is not None:
                texts.append(((*at, "rules", key), value))
    if phase.soundings is not None:
        for key in ("evaluator_instructions", "aggregator_instructions", "factor"):
            value = getattr(phase.soundings, key)
            if isinstance(value, str):
                texts.append(((*at, "soundings", key), value))
        if phase.soundings.reforge is not None:
            texts.append(
                ((*at, "soundings", "reforge", "honing_prompt"), phase.soundings.reforge.honing_prompt)
            )
    if phase.inputs is not None:
        texts.extend(strings_in(phase.inputs, (*at, "inputs")))
    if phase.context is not None:
        for position, source in enumerate(phase.context.from_):
            if not isinstance(source, str) and source.condition is not None:
                texts.append(((*at, "context", "from", position, "condition"), source.condition))
    for kind in ("sub_cascades", "async_cascades"):
        for position, ref in enumerate(getattr(phase, kind)):
            texts.extend(strings_in(ref.input_map, (*at, kind, position, "input_map")))
    inline = phase.on_error_inline
    if inline is not None and isinstance(inline.get("instructions"), str):
        texts.append(((*at, "on_error", "instructions"), inline["instructions"]))
    # Plain strings reference nothing; not parsing them keeps a phase with thousands of input
    # values (or an alias fan just under the load limits) quick to validate.
    return [(path, text) for path, text in texts if is_template(text)]


def source_name(source: str | ContextSource) -> str:
    """The phase (or keyword) a ``context.from`` entry names."""
    return source if isinstance(source, str) else source.phase


def context_sources(cascade: Cascade, phase: Phase) -> list[str]:
    """``context.from`` with the keywords all/first/previous resolved by definition order."""
    if phase.context is None:
        return []
    names = [p.name for p in cascade.phases]
    index = names.index(phase.name)
    sources: list[str] = []
    if phase.context.mode == "auto":  # it picks among every earlier phase (run/context.py)
        sources.extend(names[:index])
    for entry in phase.context.from_:
        source = source_name(entry)
        keyword = source.lower()
        if keyword == "all":
            sources.extend(names[:index])
        elif keyword == "first":
            sources.extend(names[:1] if index > 0 else [])
        elif keyword in ("previous", "prev"):
            sources.extend(names[index - 1 : index] if index > 0 else [])
        else:
            sources.append(source)
    excluded = set(phase.context.exclude)
    return [name for name in dict.fromkeys(sources) if name not in excluded]


SESSION_TABLE_TOOLS = frozenset({"sql_data", "python_data", "js_data", "clojure_data", "bash_data"})
"""Built-ins that read earlier phases' session tables (``_<phase>``, tools/session_db.py)."""
WHOLE_DATA_TOOLS = frozenset({"python_data", "js_data", "clojure_data", "bash_data", "windlass_data"})
"""Built-ins handed every earlier output (``data.<phase>``, the default ``input_table``)."""
RUN_FOLDER_TOOLS = frozenset(
    {
        "read_file",
        "write_file",
        "append_file",
        "list_files",
        "file_info",
        "run_code",
        "linux_shell",
        "linux_shell_dangerous",
    }
)
"""Built-ins whose files persist in the run's folder between calls (files.py, code.py)."""
ORDERED_TOOLS = WHOLE_DATA_TOOLS | RUN_FOLDER_TOOLS
"""A phase calling one of these waits for all the phases before it, as Windlass runs them in
order: what it reads may have been written by any of them."""
_WORD = re.compile(r"\w+")


def session_table_reads(phase: Phase, earlier: Sequence[Phase]) -> set[str]:
    """Earlier phases whose data a phase reads: session tables (``_<phase>``, ``_<phase>_<key>``
    or a ``for_each_row.result_table``) named in a ``sql_data`` phase's inputs or as a
    ``for_each_row`` table; every earlier phase for :data:`ORDERED_TOOLS` and ``shell:`` scripts,
    and for an LLM phase offered a data, file or code tool."""
    if phase.for_each_row is not None:
        words = {phase.for_each_row.table}
    elif phase.tool in ORDERED_TOOLS or (phase.tool or "").startswith("shell:"):
        return {other.name for other in earlier}
    elif phase.tool is None:
        offered = (SESSION_TABLE_TOOLS | ORDERED_TOOLS) & set(phase.tackle or ())
        return {other.name for other in earlier} if offered else set()
    elif phase.tool in SESSION_TABLE_TOOLS:
        words = {m.group(0) for _, text in strings_in(phase.inputs or {}) for m in _WORD.finditer(text)}
    else:
        return set()
    return {other.name for other in earlier if _writes_a_table_named(other, words)}


def _writes_a_table_named(phase: Phase, words: set[str]) -> bool:
    own = f"_{phase.name}"
    if any(word == own or word.startswith(own + "_") for word in words):
        return True
    result_table = phase.for_each_row.result_table if phase.for_each_row is not None else None
    return result_table is not None and result_table in words


def phase_dependencies(cascade: Cascade) -> dict[str, set[str]]:
    """Phase name -> the phases whose outputs it reads. A phase reading other state keys
    (``state.x``, written at run time by ``set_state`` and the engine) waits for every phase
    listed before it: any of them may write the key, and Windlass runs them in that order."""
    graph: dict[str, set[str]] = {}
    names = [p.name for p in cascade.phases]
    for index, phase in enumerate(cascade.phases):
        needs: set[str] = set(context_sources(cascade, phase)) | session_table_reads(
            phase, cascade.phases[:index]
        )
        for _, text in templated_fields(phase):
            needs |= referenced_phases(text)
            if reads_state_beyond_outputs(text):
                needs |= set(names[:index])
        if phase.map_over is not None:
            needs.add(phase.map_over.split(".", 1)[0])
        needs.discard(phase.name)
        graph[phase.name] = needs
    return graph


def is_state_machine(cascade: Cascade) -> bool:
    """Whether control flows along handoffs/routing (sequential) rather than data dependencies."""
    return any(p.handoffs or p.routing or p.on_error_target for p in cascade.phases)


def next_in_list(cascade: Cascade, phase: Phase) -> str | None:
    """The implicit fall-through: the phase defined after ``phase``, if any."""
    names = [p.name for p in cascade.phases]
    index = names.index(phase.name)
    return names[index + 1] if index + 1 < len(names) else None
