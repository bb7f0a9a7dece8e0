"""What a cascade may call: an explicit allowlist of Python callables.

A cascade names tools (``tool:``, ``tackle:``, validators) as either a registered name or
``python:package.module.function`` from a module the trust policy allows (``trust.py``: the dags
folder, the cascade's folder, this provider, ``[llm_provider] allowed_python_tools``). Nothing
else runs from a cascade's own text except its inline validators, in the sandbox (``sandbox.py``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_llm_provider.cascades.trust import PythonToolPolicy

PYTHON_PREFIX = "python:"
STANDARD_TOOLS: tuple[str, ...] = ()
"""Tools the Airflow adapters register for every cascade besides the built-ins
(``operators/cascade_tools.py``; ``sql_data`` is a built-in now, ``tools/sql.py``); validation
assumes them unless told which tools a run will have."""


class ToolNotFound(LookupError):
    """A cascade names a tool that is neither registered nor importable."""


class ToolRegistry:
    """Named callables a cascade may use. Sync or async; called with keyword arguments."""

    def __init__(
        self,
        tools: Mapping[str, Callable[..., Any]] | None = None,
        *,
        python_policy: PythonToolPolicy | None = None,
    ) -> None:
        self._tools: dict[str, Callable[..., Any]] = dict(tools or {})
        self.python_policy = python_policy

    def register(self, name: str, function: Callable[..., Any]) -> None:
        self._tools[name] = function

    def with_policy(self, python_policy: PythonToolPolicy) -> ToolRegistry:
        """A copy whose ``python:`` references are checked against ``python_policy``."""
        return ToolRegistry(self._tools, python_policy=python_policy)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def resolve(self, reference: str) -> Callable[..., Any]:
        """The callable behind a tool reference, or :class:`ToolNotFound` saying what was tried."""
        if reference in self._tools:
            return self._tools[reference]
        if reference.startswith(PYTHON_PREFIX):
            dotted = reference[len(PYTHON_PREFIX) :]
            refusal = self.python_policy.refusal(dotted) if self.python_policy is not None else None
            if refusal is not None:
                raise ToolNotFound(refusal)
            return _import_callable(dotted)
        known = ", ".join(self.names()) or "none"
        raise ToolNotFound(
            f"tool '{reference}' is not registered (registered: {known}). Register it with "
            "tools={'name': callable} or refer to python:package.module.function."
        )


def _import_callable(dotted: str) -> Callable[..., Any]:
    module_name, _, attribute = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ToolNotFound(f"python:{dotted}: cannot import module '{module_name}': {err}") from err
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ToolNotFound(f"python:{dotted}: module '{module_name}' has no callable '{attribute}'")
    return function


async def call_tool(function: Callable[..., Any], arguments: Mapping[str, Any]) -> Any:
    """Call sync tools in a worker thread (they may block) and await async ones."""
    import asyncio

    if inspect.iscoroutinefunction(function):
        return await function(**arguments)
    result = await asyncio.to_thread(function, **arguments)
    if inspect.isawaitable(result):
        return await result
    return result
