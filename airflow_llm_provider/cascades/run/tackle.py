"""Tools offered to the model in an LLM phase (``tackle``) and called by tool phases: registered
callables, ``python:`` references, cascades by ``cascade_id`` on the tool path, ``cascade:`` files,
the engine's ``route_to``, the Quartermaster's choice (``tackle: manifest``, manifest.py), and the
``tool_caching`` of their results.

A name resolves as in Windlass: a registered tool first, then a cascade with that ``cascade_id``
in the tool folders (the cascade's folder, its sibling ``tackle/`` and ``cascades/``, then
``AIRFLOW_LLM_TOOL_PATH`` and ``RunOptions.tool_path``). A cascade tool takes its
``inputs_schema`` fields as string arguments, runs as a sub-cascade (shared usage and budget,
depth limit) and answers with the child's final output.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from airflow_llm_provider.cascades.references import CascadeTool, find_cascade_tool
from airflow_llm_provider.cascades.refused import UNREGISTERED_TOOLS
from airflow_llm_provider.cascades.run.manifest import ManifestMixin
from airflow_llm_provider.cascades.run.tool_phase import CASCADE_PREFIX
from airflow_llm_provider.cascades.spec import MANIFEST, Phase
from airflow_llm_provider.cascades.tool_cache import MISS, ToolCache
from airflow_llm_provider.cascades.tools import PYTHON_PREFIX, call_tool
from airflow_llm_provider.cascades.tools.builtin import BuiltinTool, ToolContext, ToolServices, builtin_tool
from airflow_llm_provider.cascades.tools.declarative import (
    DeclaredTool,
    declared_tool_function,
    find_declared_tool,
)
from airflow_llm_provider.cascades.tools.state import SET_STATE
from airflow_llm_provider.cascades.trust import CONNECTION_ARGUMENTS, connection_ids, connection_refusal

ROUTE_TO = "route_to"


class TackleMixin(ManifestMixin):
    """Builds the pydantic-ai tools of a phase and resolves tool names."""

    _tool_cache: ToolCache | None = None

    async def _phase_tools(self, phase: Phase, system: str) -> tuple[list[Any], dict[str, str]]:
        """The tools of one LLM call of ``phase`` and the dict ``route_to`` writes its target into.

        ``route_to`` is offered, as in Windlass, when the phase has more than one handoff or a
        described one, and also whenever ``tackle`` lists it and the phase has handoffs; a target
        that is not a handoff is refused with the valid ones."""
        from pydantic_ai import Tool

        names = await self._manifest_tools(phase, system) if phase.tackle == [MANIFEST] else phase.tackle
        # A name listed twice is one tool (pydantic-ai refuses two tools of one name).
        kept = [name for name in dict.fromkeys(names) if not self._dropped(name)]
        tools = [self._tackle_tool(name, phase.name) for name in kept if name != ROUTE_TO]
        chosen: dict[str, str] = {}
        targets = phase.handoff_targets
        offered = len(targets) > 1 or any(h.description for h in phase.handoffs)
        if offered or (targets and ROUTE_TO in phase.tackle):
            menu = "; ".join(f"{h.target}: {h.description or ''}".strip(": ") for h in phase.handoffs)

            def route_to(target: str) -> str:
                """Choose the next phase."""
                if target not in targets:
                    return f"'{target}' is not a valid target; choose one of {targets}"
                chosen["target"] = target
                return f"routing to {target}"

            route_to.__doc__ = f"Choose which phase runs next. Targets: {menu}"
            tools.append(Tool(route_to, name=ROUTE_TO))
        elif ROUTE_TO in phase.tackle:
            self._emit(f"phase {phase.name}: `route_to` is listed but the phase has no handoffs; not offered")
        return tools, chosen

    def _tackle_tool(self, reference: str, phase_name: str) -> Any:
        """A tool the model may call in ``phase_name``: a registered callable, python:..., a
        Windlass built-in, a cascade by ``cascade_id`` or a ``cascade:`` file."""
        from pydantic_ai import Tool

        if reference.startswith(CASCADE_PREFIX):
            return self._cascade_file_tool(reference)
        builtin = self._builtin(reference)
        if builtin is not None:
            function = self._cached_tool(reference, builtin.make(self._tool_context(phase_name)))
            if builtin.json_schema is None:
                return Tool(function, name=builtin.name, description=builtin.description or None)
            return Tool.from_schema(
                function, name=builtin.name, description=builtin.description, json_schema=builtin.json_schema
            )
        declared = self._declared_tool(reference)
        if declared is not None:
            function = self._cached_tool(reference, self._resolve_tool(reference, phase_name))
            return Tool.from_schema(
                function,
                name=declared.tool_id,
                description=declared.description or f"Run the tool {declared.tool_id}.",
                json_schema=_text_arguments(declared.inputs),
            )
        tool = self._cascade_tool(reference)
        if tool is None:
            name = reference.split(":")[-1].split(".")[-1]
            return Tool(self._cached_tool(reference, self.tools.resolve(reference)), name=name)
        description = (tool.description or f"Run the cascade {tool.cascade_id}.").strip()
        schema = _text_arguments(tool.inputs)
        function = self._cached_tool(reference, self._resolve_tool(reference))
        return Tool.from_schema(function, name=tool.cascade_id, description=description, json_schema=schema)

    def _resolve_tool(
        self, name: str, phase_name: str = "", *, deterministic: bool = False
    ) -> Callable[..., Any]:
        """The callable behind a tool name: registered or ``python:``, then a Windlass built-in
        (tools/builtin.py), else a cascade on the tool path by ``cascade_id`` (run as a
        sub-cascade); ToolNotFound otherwise. ``deterministic``: called by a ``tool:`` phase."""
        builtin = self._builtin(name)
        if builtin is not None:
            return builtin.make(self._tool_context(phase_name, deterministic=deterministic))
        declared = self._declared_tool(name)
        if declared is not None:
            return declared_tool_function(
                declared,
                self._tool_context(phase_name, deterministic=deterministic),
                lambda step: self._resolve_tool(step, phase_name, deterministic=deterministic),
                self.render,
            )
        tool = self._cascade_tool(name)
        if tool is None:
            return self.tools.resolve(name)
        reference = f"{CASCADE_PREFIX}{tool.path}"  # absolute: _run_sub_cascade joins it unchanged

        async def run_cascade_tool(**inputs: Any) -> Any:
            return await self._run_sub_cascade(reference, inputs)

        run_cascade_tool.__name__ = tool.cascade_id
        return run_cascade_tool

    def _dropped(self, name: str) -> bool:
        """Windlass's voice tools are not offered unless the user registers one (refused.py)."""
        return name in UNREGISTERED_TOOLS and name not in self.tools.names()

    def _builtin(self, name: str) -> BuiltinTool | None:
        """The Windlass built-in ``name``, unless the user registered a tool of that name."""
        if name in self.tools.names():
            return None
        return builtin_tool(name)

    def _tool_context(self, phase_name: str, *, deterministic: bool = False) -> ToolContext:
        """What a built-in tool called in ``phase_name`` sees of this run."""
        return ToolContext(
            phase_name=phase_name,
            cascade_id=self.cascade.cascade_id,
            session=self.session,
            state=self._state,
            outputs=self._outputs,
            input=self._input,
            base_dir=self.base_dir,
            services=self.options.tool_services or ToolServices(),
            emit=self._emit,
            run_cascade=self._run_child,
            start_background=self._start_background,
            deterministic=deterministic,
            connections=connection_ids(self.cascade),
            questions=self.questions,
        )

    def _start_background(self, work: Coroutine[Any, Any, Any]) -> None:
        self._background.append(asyncio.ensure_future(work))  # awaited at the run's end (children.py)

    def _declared_tool(self, name: str) -> DeclaredTool | None:
        """A ``*.tool.json``/``*.tool.yaml`` file on the tool path with this ``tool_id``."""
        if name in self.tools.names() or ":" in name:
            return None
        return find_declared_tool(name, self._tool_folders())

    def _cascade_tool(self, name: str) -> CascadeTool | None:
        if name in self.tools.names() or name.startswith(PYTHON_PREFIX) or ":" in name:
            return None
        return find_cascade_tool(name, self._tool_folders())

    def _cascade_file_tool(self, reference: str) -> Any:
        """``cascade:path.yaml`` in ``tackle``: one ``input`` object argument (our spelling)."""
        from pydantic_ai import Tool

        from airflow_llm_provider.cascades.loader import load_cascade

        child = load_cascade(self._cascade_path(reference[len(CASCADE_PREFIX) :]))

        async def run_cascade_tool(input: dict[str, Any]) -> Any:
            return await self._run_sub_cascade(reference, input)

        description = (child.description or f"Run the cascade {child.cascade_id}.").strip()
        if child.inputs_schema:
            fields = ", ".join(f"{name}: {text}" for name, text in child.inputs_schema.items())
            description += f" Input fields: {fields}."
        return Tool(run_cascade_tool, name=child.cascade_id, description=description)

    def _cached_tool(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` answering from ``tool_caching`` when the cascade caches ``name``'s results
        (unchanged otherwise): a hit skips the call, a success is stored."""
        function = self._connection_checked(name, function)
        cache = self._tool_cache_of_run()
        if cache is None or cache.policy(name) is None or getattr(function, "__name__", "") == SET_STATE:
            return function  # a cached set_state would skip its write
        policy = cache.policy(name)

        @functools.wraps(function)
        async def cached(**arguments: Any) -> Any:
            hit = cache.get(name, arguments)
            if hit is not MISS:
                self._emit(
                    (policy.hit_message if policy else None) or f"tool {name}: answered from tool cache"
                )
                return hit
            result = await call_tool(function, arguments)
            cache.put(name, arguments, result)
            return result

        return cached

    def _connection_checked(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` refusing connection ids the cascade does not name (``trust.py``), when it
        takes one; unchanged otherwise."""
        try:
            parameters = inspect.signature(function).parameters
        except (TypeError, ValueError):
            return function
        if not any(key in parameters for key in CONNECTION_ARGUMENTS):
            return function
        allowed = connection_ids(self.cascade)

        @functools.wraps(function)
        async def checked(**arguments: Any) -> Any:
            if (refusal := connection_refusal(name, arguments, allowed)) is not None:
                raise PermissionError(refusal)
            return await call_tool(function, arguments)

        return checked

    def _tool_cache_of_run(self) -> ToolCache | None:
        config = self.cascade.tool_caching
        if config is None or not config.enabled:
            return None
        if self._tool_cache is None:
            self._tool_cache = ToolCache(config, resolve=self._resolve_tool)
            if config.storage != "memory":
                self._emit(
                    f"tool_caching: storage '{config.storage}' is kept in this run's memory "
                    "(as Windlass does; nothing is shared between runs)"
                )
        return self._tool_cache


def _text_arguments(inputs: dict[str, str]) -> dict[str, Any]:
    """The arguments' schema of a cascade or declared tool: every input is text, all required."""
    return {
        "type": "object",
        "properties": {k: {"type": "string", "description": v} for k, v in inputs.items()},
        "required": list(inputs),
    }
