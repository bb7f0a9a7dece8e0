"""Windlass's declarative tools: ``*.tool.json`` / ``*.tool.yaml`` files in the tool folders.

A file defines ``tool_id``, ``description``, ``inputs_schema`` (argument -> description; every
argument is text) and a ``type``:

- ``shell``: ``command`` (a template over the arguments). It runs through bash in the sandbox
  (``sandbox.py``), in a ``tools`` folder of the run's scratch folder. Windlass runs
  ``sandbox: false`` tools on the host; here a model's arguments never reach a shell outside the
  sandbox, so ``sandbox: false`` only relaxes the sandbox to "best effort" when the cascade's author
  calls the tool from a ``tool:`` phase. ``working_dir`` is refused (the scratch folder is the
  only place the command may write).
- ``python``: ``import_path``, called as ``python:<import_path>`` under the cascade's trust policy.
- ``composite``: ``steps`` of ``{tool, args, condition}``; each step's ``args`` and ``condition``
  are templates over ``input`` and ``steps`` (earlier step results by tool id).
- ``http`` and ``gradio``: refused by name (an Airflow worker reaches HTTP APIs through Airflow
  connections; a tool file would bypass them and the secrets backend).

Templates render in the cascade's sandboxed Jinja environment with ``input`` (the arguments) and
each argument by name; ``env`` is empty: a tool file must not read the worker's environment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_llm_provider.cascades.folder_index import FolderIndex

SUFFIXES = (".tool.json", ".tool.yaml", ".tool.yml")
TYPES = ("shell", "python", "composite")
REFUSED_TYPES = {
    "http": "an Airflow worker reaches HTTP APIs through Airflow connections (HttpHook), which keep "
    "credentials in the secrets backend; write a python tool that uses one",
    "gradio": "Hugging Face Spaces are called through Windlass's Harbor client, which is not part of "
    "airflow-llm-provider",
}


@dataclass(frozen=True)
class DeclaredTool:
    """One declarative tool file, as read (``problems`` lists what makes it unusable)."""

    tool_id: str
    path: Path
    kind: str
    description: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    definition: dict[str, Any] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def read_tool_file(path: Path) -> DeclaredTool | None:
    """The tool a file declares, or None when it declares no ``tool_id``."""
    from airflow_llm_provider.cascades.loader import read_document

    data = read_document(path)
    if not isinstance(data, dict) or not isinstance(data.get("tool_id"), str):
        return None
    problems: list[str] = []
    kind = str(data.get("type", ""))
    if kind in REFUSED_TYPES:
        problems.append(f"`type: {kind}` tools are refused: {REFUSED_TYPES[kind]}")
    elif kind not in TYPES:
        problems.append(f"`type` must be one of {', '.join(TYPES)}, got {kind!r}")
    required = {"shell": "command", "python": "import_path", "composite": "steps"}.get(kind)
    if required and not data.get(required):
        problems.append(f"a {kind} tool needs `{required}`")
    if kind == "shell" and data.get("working_dir"):
        problems.append("`working_dir` is refused: the command runs in the run's scratch folder")
    if kind == "composite" and not all(
        isinstance(step, Mapping) and isinstance(step.get("tool"), str) for step in data.get("steps") or []
    ):
        problems.append("every composite step needs a `tool` name")
    schema = data.get("inputs_schema") or {}
    if not isinstance(schema, Mapping):
        problems.append("`inputs_schema` must map argument names to descriptions")
        schema = {}
    description = data.get("description")
    return DeclaredTool(
        tool_id=data["tool_id"],
        path=path,
        kind=kind,
        description=description if isinstance(description, str) else "",
        inputs={str(k): str(v) for k, v in schema.items()},
        definition=dict(data),
        problems=tuple(problems),
    )


_INDEX = FolderIndex(SUFFIXES, read_tool_file, key=lambda tool: tool.tool_id)


def find_declared_tool(name: str, folders: Sequence[Path]) -> DeclaredTool | None:
    """The first tool file with ``tool_id == name`` on the tool path."""
    return _INDEX.find(name, folders)


def declared_tool_names(folders: Sequence[Path]) -> set[str]:
    return _INDEX.names(folders)


def declared_tool_function(
    tool: DeclaredTool,
    context: Any,
    resolve: Callable[[str], Callable[..., Any]],
    render: Callable[[str, Mapping[str, Any]], str],
) -> Callable[..., Any]:
    """The callable for a declared tool at one call site: ``context`` is the built-ins'
    ``ToolContext``, ``resolve`` finds a tool by name (composite steps, python tools) and
    ``render`` renders a template in the cascade's sandbox."""
    from airflow_llm_provider.cascades.tools import call_tool

    if tool.problems:
        raise ValueError(f"tool file {tool.path}: {'; '.join(tool.problems)}")
    definition = tool.definition

    async def run(**arguments: Any) -> Any:
        missing = [name for name in tool.inputs if name not in arguments]
        if missing:
            raise TypeError(f"tool {tool.tool_id}: missing argument(s) {', '.join(missing)}")
        variables = {**arguments, "input": dict(arguments), "env": {}}
        if tool.kind == "python":
            return await call_tool(resolve(f"python:{definition['import_path']}"), arguments)
        if tool.kind == "shell":
            return await _run_shell(tool, render(str(definition["command"]), variables), context)
        return await _run_composite(tool, variables, resolve, render)

    run.__name__ = tool.tool_id
    return run


async def _run_shell(tool: DeclaredTool, command: str, context: Any) -> str:
    from dataclasses import replace

    from airflow_llm_provider.cascades.sandbox import SandboxUnavailable, default_limits, run_sandboxed

    sandbox_wanted = tool.definition.get("sandbox", True) is not False
    if context.services.allow_unsandboxed_code:
        isolation = "best_effort"
    elif sandbox_wanted or not context.deterministic:
        isolation = "required"
    else:
        isolation = "best_effort"
    seconds = float(tool.definition.get("timeout") or 30)
    limits = replace(default_limits(), wall_seconds=seconds, cpu_seconds=max(1, int(seconds)))
    try:
        result = await run_sandboxed(
            ["bash", "-c", command],
            workdir=context.session.folder / "tools",
            limits=limits,
            isolation=isolation,  # type: ignore[arg-type]
            merge_stderr=True,
        )
    except SandboxUnavailable as err:
        return f"Error: {err}"
    if result.timed_out:
        return f"Error: tool {tool.tool_id} timed out after {seconds:g}s"
    output = result.stdout
    return output if result.returncode == 0 else f"Exit code: {result.returncode}\n{output}"


async def _run_composite(
    tool: DeclaredTool,
    variables: dict[str, Any],
    resolve: Callable[[str], Callable[..., Any]],
    render: Callable[[str, Mapping[str, Any]], str],
) -> Any:
    from airflow_llm_provider.cascades.tools import call_tool

    results: dict[str, Any] = {}
    last: Any = None
    for step in tool.definition["steps"]:
        scope = {**variables, "steps": dict(results)}
        condition = step.get("condition")
        if condition and render(str(condition), scope).strip().lower() in ("", "false", "0", "none", "no"):
            continue
        arguments = {
            key: render(value, scope) if isinstance(value, str) else value
            for key, value in (step.get("args") or {}).items()
        }
        last = results[step["tool"]] = await call_tool(resolve(step["tool"]), arguments)
    return last
