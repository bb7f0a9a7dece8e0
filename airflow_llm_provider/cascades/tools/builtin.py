"""Windlass's built-in tools, one family per module, behind one registry.

A Windlass cascade names built-in tools (``set_state``, ``sql_data``, ``python_data``,
``run_code``, ``create_plotly``...) without registering them; so do ours. Each family module
(``state``, ``sql``, ``polyglot``, ``bash``, ``code``, ``artifacts``, ``cascades``,
``files``, ``human``, ``signals``) defines ``TOOLS``: a tuple of :class:`BuiltinTool`. A built-in is
made per call site from a :class:`ToolContext` (the run's state, outputs, session resources and
the services the Airflow adapters inject), so the family modules import no Airflow and keep no global state.

Resolution order (as Windlass's registry lookup): a tool the user registers under a name wins,
then the built-in of that name, then a cascade by ``cascade_id`` on the tool path.

A built-in that cannot run on this machine (no sandbox, no JavaScript runtime) says why in
:attr:`BuiltinTool.unavailable`; ``validate`` refuses the cascade with that reason before
anything is spent.
"""

from __future__ import annotations

import importlib
import inspect
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from airflow_llm_provider.cascades.human import HumanChannel, QuestionCounter
from airflow_llm_provider.cascades.settings import option_flag
from airflow_llm_provider.cascades.signals import SignalBus

UNSANDBOXED_OPTION = "allow_unsandboxed_code"

FAMILIES = ("state", "sql", "polyglot", "bash", "code", "artifacts", "cascades", "files", "human", "signals")
"""Modules of ``airflow_llm_provider.cascades.tools`` holding built-in tool families."""


class SqlConnections(Protocol):
    """Named SQL connections a cascade may query (the Airflow adapter: Airflow connections
    through their ``DbApiHook``). The engine never opens a connection itself."""

    def run(
        self, conn_id: str, sql: str, parameters: Any = None, max_rows: int = 10_000
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run ``sql``; the column names and at most ``max_rows`` rows (more is an error)."""
        ...

    def list(self) -> list[dict[str, Any]]:
        """The connections usable here: ``{"name", "type", "description"}`` each."""
        ...


@dataclass
class ToolServices:
    """What the host (``airflow-llm run``, the operators) lends the built-in tools."""

    sql: SqlConnections | None = None
    """Named SQL connections (``sql_data(connection=...)``, ``sql_query``); None: only the
    session database."""
    artifacts_dir: Path | None = None
    """Where artifacts and charts are kept (``artifacts.py``); None: next to the phase cache."""
    scratch_root: Path | None = None
    """Parent of each run's session folder (session DuckDB, bash working directory); None: the
    system temporary directory."""
    human: HumanChannel | None = None
    """Who answers ``ask_human``, ``request_decision`` and ``human_input`` (``cascades/human.py``);
    None: nobody, and a question fails its phase saying how to answer it."""
    signals: SignalBus | None = None
    """Where ``await_signal``/``fire_signal``/``list_signals`` meet (``cascades/signals.py``); None:
    this process only (``LocalSignalBus``). The operators lend Airflow Variables."""
    allow_unsandboxed_code: bool = field(default_factory=lambda: option_flag(UNSANDBOXED_OPTION))
    """``[llm_provider] allow_unsandboxed_code``: run model-written code without bubblewrap
    (dangerous; docs/security.md). Off by default."""


class RunSession:
    """Per-run resources shared by the run's phases, soundings and children: a scratch folder
    holding the session DuckDB and the bash session's working directory. Created on first use,
    removed when the run ends (:meth:`close`)."""

    def __init__(self, session_id: str, scratch_root: Path | None = None) -> None:
        self.session_id = session_id
        self._scratch_root = scratch_root
        self._folder: Path | None = None
        self.lock = threading.RLock()
        """Serialises use of the session database (DuckDB allows one writer per file)."""
        self.resources: dict[str, Any] = {}
        """Family-owned handles (e.g. an open DuckDB connection), closed by :meth:`close` when
        they have a ``close`` method."""

    @property
    def folder(self) -> Path:
        with self.lock:
            if self._folder is None:
                root = self._scratch_root
                if root is not None:
                    root.mkdir(parents=True, exist_ok=True)
                self._folder = Path(tempfile.mkdtemp(prefix=f"cascade-{self.session_id[:12]}-", dir=root))
            return self._folder

    def close(self) -> None:
        with self.lock:
            for resource in self.resources.values():
                close = getattr(resource, "close", None)
                if callable(close):
                    try:
                        close()
                    except Exception:  # closing is best effort; the folder goes anyway
                        pass
            self.resources.clear()
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder = None


@dataclass
class ToolContext:
    """What one built-in tool call site sees of the run."""

    phase_name: str
    cascade_id: str
    session: RunSession
    state: dict[str, Any]
    """The run's live state: a tool may write into it (``set_state``)."""
    outputs: Mapping[str, Any]
    input: Mapping[str, Any]
    base_dir: Path | None
    services: ToolServices
    emit: Callable[[str], None]
    run_cascade: Callable[..., Awaitable[Any]]
    """``await run_cascade(cascade, inputs, outputs=None, state=None)``: run a child of this run
    and return its final output. ``cascade`` is a file path relative to ``base_dir`` (or to the
    folders above it; confined as ``cascade:`` files are) or a
    :class:`~airflow_llm_provider.cascades.spec.Cascade` built in memory, which starts with
    ``outputs`` and ``state`` of the caller. Shared usage, budget, depth and sub-run limits."""
    start_background: Callable[[Coroutine[Any, Any, Any]], None]
    """Start a coroutine the run awaits before it ends (``spawn_cascade``); call it from a
    coroutine (async tool)."""
    deterministic: bool = False
    """Called by a ``tool:`` phase (Windlass gives those phases' data tools the run's data)."""
    connections: frozenset[str] | None = None
    """The connection ids the cascade may use (``trust.connection_ids``); None: not known here."""
    questions: QuestionCounter = field(default_factory=QuestionCounter)
    """The run's question numbering (``human.py``): keys a resumed run finds its answers by."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def session_id(self) -> str:
        return self.session.session_id


@dataclass(frozen=True)
class BuiltinTool:
    """One Windlass built-in: its name, how to make it for a call site, and whether it can run
    on this machine."""

    name: str
    make: Callable[[ToolContext], Callable[..., Any]]
    """The callable for one call site; its signature is what the model sees (Windlass's
    argument names)."""
    description: str = ""
    json_schema: dict[str, Any] | None = None
    """The arguments' schema shown to the model; None: derived from the callable's signature."""
    unavailable: Callable[[ToolServices | None], str | None] = field(default=lambda services: None)
    """Why the tool cannot run here (a missing runtime or sandbox), or None."""


_lock = threading.Lock()
_registry: dict[str, BuiltinTool] | None = None


def _load() -> dict[str, BuiltinTool]:
    global _registry
    with _lock:
        if _registry is None:
            found: dict[str, BuiltinTool] = {}
            for family in FAMILIES:
                module = importlib.import_module(f"airflow_llm_provider.cascades.tools.{family}")
                for tool in module.TOOLS:
                    if tool.name in found:
                        raise RuntimeError(f"built-in tool {tool.name} is defined twice ({family})")
                    found[tool.name] = tool
            _registry = found
        return _registry


def builtin_tool(name: str) -> BuiltinTool | None:
    """The built-in named ``name``, or None."""
    return _load().get(name)


def builtin_names() -> frozenset[str]:
    return frozenset(_load())


def argument_issues(name: str, arguments: Collection[str]) -> list[str]:
    """What is wrong with calling the built-in ``name`` with these argument names (a ``tool:``
    phase's ``inputs``): missing required ones and unknown ones, as validate reports them."""
    tool = builtin_tool(name)
    if tool is None:
        return []
    return call_issues(tool.make(_blank_context()), name, arguments)


def call_issues(function: Callable[..., Any], name: str, arguments: Collection[str]) -> list[str]:
    """Missing required and unknown argument names for calling ``function`` with keywords."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable without a signature: no check
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [p.name for p in parameters if p.kind in kinds]
    required = [p.name for p in parameters if p.kind in kinds and p.default is inspect.Parameter.empty]
    issues = [f"`{name}` needs the input `{arg}`" for arg in required if arg not in arguments]
    issues += [
        f"`{name}` takes no input `{arg}` (it takes: {', '.join(accepted) or 'nothing'})"
        for arg in arguments
        if arg not in accepted
    ]
    return issues


def _blank_context() -> ToolContext:
    """A context for reading a built-in's signature; nothing is ever called through it."""

    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    return ToolContext(
        phase_name="",
        cascade_id="",
        session=RunSession("signature"),
        state={},
        outputs={},
        input={},
        base_dir=None,
        services=ToolServices(),
        emit=lambda line: None,
        run_cascade=nothing,
        start_background=lambda work: work.close(),
    )


def unavailable_reason(name: str, services: ToolServices | None = None) -> str | None:
    """Why the built-in ``name`` cannot run here (None when it can, or is not a built-in)."""
    tool = builtin_tool(name)
    return tool.unavailable(services) if tool is not None else None
