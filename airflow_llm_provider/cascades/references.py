"""What a cascade names outside itself, checked before anything runs: tools, validators, child
cascades, instruction and SQL files.

Windlass resolves a tool or validator name through its registered functions and then through the
cascades in its tool folders (``examples/``, ``tackle/``, ``cascades/``), by ``cascade_id``. We
do the same over a *tool path*: by default the cascade's own folder and its siblings ``tackle/``
and ``cascades/``, plus folders from ``AIRFLOW_LLM_TOOL_PATH`` (``os.pathsep``-separated; the
Airflow adapters fill it from ``[llm_provider] tool_path``) or given by the caller.

A name that resolves nowhere is an error here, so a run never pays for phases before the one that
would have failed.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from airflow_llm_provider.cascades.errors import FieldPath
from airflow_llm_provider.cascades.folder_index import FolderIndex
from airflow_llm_provider.cascades.refused import REFUSED_TOOLS, UNREGISTERED_TOOLS
from airflow_llm_provider.cascades.spec import MANIFEST, Cascade, Phase, PolyglotValidator
from airflow_llm_provider.cascades.tools import PYTHON_PREFIX, ToolNotFound, ToolRegistry
from airflow_llm_provider.cascades.tools.builtin import (
    argument_issues,
    builtin_tool,
    call_issues,
    unavailable_reason,
)
from airflow_llm_provider.cascades.tools.declarative import (
    DeclaredTool,
    declared_tool_names,
    find_declared_tool,
)
from airflow_llm_provider.cascades.trust import PythonToolPolicy, confined_path, python_tool_policy

Issue = tuple[FieldPath, str]

TOOL_PATH_ENV = "AIRFLOW_LLM_TOOL_PATH"
TOOL_FOLDERS = ("tackle", "cascades")
"""Siblings of a cascade's folder searched for tool cascades, as Windlass's ``tackle_dirs``."""
ROUTE_TO = "route_to"
"""Offered by the engine on phases with handoffs (run/tackle.py)."""
_SUFFIXES = (".yaml", ".yml", ".json")

WINDLASS_BUILTIN_TOOLS = frozenset(
    {
        "set_state",
        "sql_data",
        "python_data",
        "route_to",
        "sql_search",
        "create_plotly",
        "request_decision",
        "bash_data",
        "create_vega_lite",
        "sql_query",
        "run_code",
        "await_signal",
        "linux_shell",
        "list_sql_connections",
        "say",
        "ask_human",
        "create_artifact",
        "js_data",
        "windlass_data",
        "ask_human_custom",
        "clojure_data",
        "create_chart",
        "rabbitize_close",
        "rabbitize_execute",
        "rabbitize_extract",
        "rabbitize_start",
        "fire_signal",
        "sql_rag_search",
        "smart_sql_run",
        "map_cascade",
        "rag_list_sources",
        "rag_read_chunk",
        "rag_search",
        "research_execute",
        "research_query",
        "show_ui",
        "append_file",
        "control_browser",
        "extract_page_content",
        "file_info",
        "get_artifact",
        "get_browser_status",
        "get_research_session",
        "linux_shell_dangerous",
        "list_artifacts",
        "list_files",
        "list_research_sessions",
        "list_signals",
        "listen",
        "process_voice_recording",
        "rabbitize_status",
        "read_file",
        "save_research_session",
        "spawn_cascade",
        "take_screenshot",
        "transcribe_audio",
        "write_file",
    }
)
"""The names Windlass registers as built-in tools (``register_tackle`` in its ``__init__``)."""


@dataclass(frozen=True)
class CascadeTool:
    """A cascade usable as a tool (or validator) by its ``cascade_id``."""

    cascade_id: str
    path: Path
    description: str
    inputs: dict[str, str]


def tool_path(cascade_file: Path | None, extra: Sequence[str | Path] = ()) -> list[Path]:
    """The folders searched for tool cascades of ``cascade_file``, in order."""
    return tool_path_of_folder(cascade_file.resolve().parent if cascade_file is not None else None, extra)


def tool_path_of_folder(base_dir: Path | None, extra: Sequence[str | Path] = ()) -> list[Path]:
    """The folders searched for tool cascades of a cascade in ``base_dir`` (what the engine knows
    at run time): ``base_dir``, its sibling ``tackle/`` and ``cascades/``, ``AIRFLOW_LLM_TOOL_PATH``,
    then ``extra``."""
    folders: list[Path] = []
    if base_dir is not None:
        here = base_dir.resolve()
        folders.append(here)
        folders.extend(here.parent / name for name in TOOL_FOLDERS)
    configured = os.environ.get(TOOL_PATH_ENV, "")
    folders.extend(Path(part) for part in configured.split(os.pathsep) if part.strip())
    folders.extend(Path(folder) for folder in extra)
    return list(dict.fromkeys(folder.resolve() for folder in folders if folder.is_dir()))


def _read_tool(path: Path) -> CascadeTool | None:
    """The cascade in ``path`` as a tool, or None when it is not a cascade (any file may sit in
    a tool folder; a broken one is reported when it is used, not here)."""
    from airflow_llm_provider.cascades.loader import read_document

    data = read_document(path)
    if not isinstance(data, dict) or not isinstance(data.get("cascade_id"), str):
        return None
    if not isinstance(data.get("phases"), list):
        return None
    schema = data.get("inputs_schema")
    inputs = {str(k): str(v) for k, v in schema.items()} if isinstance(schema, dict) else {}
    description = data.get("description")
    return CascadeTool(
        cascade_id=data["cascade_id"],
        path=path,
        description=description if isinstance(description, str) else "",
        inputs=inputs,
    )


_INDEX = FolderIndex(_SUFFIXES, _read_tool, key=lambda tool: tool.cascade_id)


def find_cascade_tool(name: str, folders: Sequence[Path]) -> CascadeTool | None:
    """The first cascade with ``cascade_id == name`` on the tool path."""
    return _INDEX.find(name, folders)


def cascade_tool_names(folders: Sequence[Path]) -> set[str]:
    return _INDEX.names(folders)


def reference_issues(
    cascade: Cascade,
    cascade_file: Path,
    tools: Collection[str],
    extra_tool_path: Sequence[str | Path] = (),
) -> list[Issue]:
    """Every name or file ``cascade`` refers to that cannot be found. ``tools`` are the names
    the caller registers (the Airflow adapters' and the user's)."""
    folders = tool_path(cascade_file, extra_tool_path)
    base = cascade_file.resolve().parent
    resolver = _Resolver(cascade, {*tools, ROUTE_TO}, folders, python_tool_policy(base))
    issues: list[Issue] = []
    for index, phase in enumerate(cascade.phases):
        issues.extend(_phase_issues(phase, ("phases", index), base, resolver))
    return issues


class _Resolver:
    def __init__(
        self, cascade: Cascade, tools: set[str], folders: Sequence[Path], python_policy: PythonToolPolicy
    ) -> None:
        self.cascade = cascade
        self.tools = tools
        self.folders = folders
        self.python_policy = python_policy

    def tool_known(self, name: str) -> bool:
        if name == self.cascade.memory:  # the memory bank's search tool (run/memory.py)
            return True
        if name in self.tools:
            return True
        if builtin_tool(name) is not None:
            return unavailable_reason(name) is None
        declared = find_declared_tool(name, self.folders)
        if declared is not None:
            return not self.declared_problems(declared)
        return find_cascade_tool(name, self.folders) is not None

    def input_issues(self, name: str, arguments: list[str]) -> list[str]:
        """A ``tool:`` phase's inputs against the tool's arguments, when the tool is a built-in or
        an importable ``python:`` function (a registered tool is the caller's; not checked)."""
        if name in self.tools:
            return []
        if builtin_tool(name) is not None:
            return argument_issues(name, arguments)
        if name.startswith(PYTHON_PREFIX) and self.python_policy.refusal(name[len(PYTHON_PREFIX) :]) is None:
            try:
                function = ToolRegistry().resolve(name)
            except ToolNotFound:
                return []  # reported by the tool check
            return call_issues(function, name, arguments)
        return []

    def declared_problems(self, declared: DeclaredTool) -> list[str]:
        """What makes a tool file unusable, including a ``python`` tool the trust policy refuses."""
        problems = list(declared.problems)
        if declared.kind == "python" and not problems:
            refusal = self.python_policy.refusal(str(declared.definition.get("import_path")))
            if refusal is not None:
                problems.append(refusal)
        return problems

    def unknown_tool(self, name: str, what: str = "tool") -> str:
        if name not in self.tools and (reason := unavailable_reason(name)) is not None:
            return f"Windlass built-in tool '{name}' cannot run here: {reason}"
        if name in REFUSED_TOOLS:
            return REFUSED_TOOLS[name]
        declared = find_declared_tool(name, self.folders)
        if declared is not None and (problems := self.declared_problems(declared)):
            return f"tool file {declared.path}: {'; '.join(problems)}"
        if name in WINDLASS_BUILTIN_TOOLS and builtin_tool(name) is None:
            return f"Windlass built-in tool '{name}' is not available in airflow-llm-provider yet"
        candidates = self.tools | cascade_tool_names(self.folders) | declared_tool_names(self.folders)
        if what == "validator":
            candidates |= set(self.cascade.validators)
        close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.7)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return (
            f"unknown {what} '{name}'{hint}: not a registered tool and no cascade with that "
            f"cascade_id on the tool path ({_describe_folders(self.folders)})"
        )


def _describe_folders(folders: Sequence[Path]) -> str:
    if not folders:
        return "empty"
    shown = ", ".join(str(folder) for folder in folders[:4])
    return shown + (f" and {len(folders) - 4} more" if len(folders) > 4 else "")


def _phase_issues(phase: Phase, at: FieldPath, base: Path, resolver: _Resolver) -> Iterator[Issue]:
    if phase.instructions is not None and phase.instructions.startswith("@"):
        yield from _file_issue(
            phase.instructions[1:].strip(), base, (*at, "instructions"), "instructions file", upward=True
        )
    if phase.tool is not None:
        yield from _tool_issues(phase.tool, (*at, "tool"), base, resolver)
        arguments = list(phase.inputs or {})
        if phase.tool == "sql_data" and "llm_config" in arguments and "sql_data" not in resolver.tools:
            arguments.remove("llm_config")
            yield (
                (*at, "inputs", "llm_config"),
                "`llm_config` (Windlass's LLM functions in SQL, windlass_udf) is not supported by "
                "airflow-llm-provider yet",
            )
        for message in resolver.input_issues(phase.tool, arguments):
            yield (*at, "inputs"), message
    if phase.tackle != [MANIFEST]:
        for position, name in enumerate(phase.tackle):
            if name in UNREGISTERED_TOOLS and name not in resolver.tools:
                continue  # dropped with a warning, as Windlass drops it (validate.py)
            yield from _tool_issues(name, (*at, "tackle", position), base, resolver)
    for kind in ("sub_cascades", "async_cascades"):
        for position, ref in enumerate(getattr(phase, kind)):
            yield from _file_issue(ref.ref, base, (*at, kind, position, "ref"), "child cascade")
    if phase.for_each_row is not None and phase.for_each_row.cascade is not None:
        yield from _file_issue(
            phase.for_each_row.cascade, base, (*at, "for_each_row", "cascade"), "child cascade"
        )
    from airflow_llm_provider.cascades.validate import phase_validators

    for path, validator in phase_validators(phase, at):
        if isinstance(validator, PolyglotValidator):
            if validator.tool is not None and not resolver.tool_known(validator.tool):
                yield (*path, "tool"), resolver.unknown_tool(validator.tool)
            continue
        if validator.startswith("python:"):
            if (refusal := resolver.python_policy.refusal(validator[len("python:") :])) is not None:
                yield path, refusal
            continue
        if validator in resolver.cascade.validators:
            continue
        if not resolver.tool_known(validator):
            yield path, resolver.unknown_tool(validator, "validator") + "; or define it under `validators:`"


def _tool_issues(name: str, at: FieldPath, base: Path, resolver: _Resolver) -> Iterator[Issue]:
    if name.startswith("python:"):
        if (refusal := resolver.python_policy.refusal(name[len("python:") :])) is not None:
            yield at, refusal
        return
    if name.startswith("shell:"):
        yield from _file_issue(name[len("shell:") :].strip(), base, at, "shell script")
        return
    if name.startswith("sql:"):
        yield from _file_issue(name[4:].strip(), base, at, "SQL file")
    elif name.startswith("cascade:"):
        yield from _file_issue(name[len("cascade:") :].strip(), base, at, "child cascade")
    elif not resolver.tool_known(name):
        yield at, resolver.unknown_tool(name)


def _file_issue(
    relative: str, base: Path, at: FieldPath, what: str, *, upward: bool = False
) -> Iterator[Issue]:
    if not relative:
        return
    confined, refusal = confined_path(relative, base)
    if refusal is not None:
        yield at, f"{what} refused: {refusal}"
        return
    found = (
        find_relative_file(relative, base)
        if upward
        else (confined if confined and confined.is_file() else None)
    )
    if found is None:
        where = f"{base} and the folders above it" if upward else str(base / relative)
        yield at, f"{what} '{relative}' not found (looked at {where})"


MAX_UPWARD = 3
"""Parent folders searched for an ``@file`` template (Windlass reads it relative to its working
directory, usually the checkout's root a level or two above the cascade)."""


def find_relative_file(relative: str, base: Path) -> Path | None:
    """``relative`` from ``base``, else from up to :data:`MAX_UPWARD` of its parents; never an
    absolute path, one climbing with ``..`` or one a symlink takes elsewhere (``trust.py``)."""
    for folder in [base, *list(base.resolve().parents)[:MAX_UPWARD]]:
        found, refusal = confined_path(relative, folder)
        if refusal is not None:
            return None
        if found is not None and found.is_file():
            return found
    return None
