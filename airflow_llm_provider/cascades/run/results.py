"""What goes into and comes out of a cascade run: the run options, the live run record, the
per-phase trace, the results, and :class:`PhaseFailed`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from airflow_llm_provider.cascades.cache import PhaseCache
from airflow_llm_provider.cascades.limits import Limits, configured_limits
from airflow_llm_provider.cascades.memory import MemoryStore
from airflow_llm_provider.cascades.redact import redact, redact_value
from airflow_llm_provider.cascades.run.journal import ResponseJournal
from airflow_llm_provider.cascades.spec import Budget
from airflow_llm_provider.cascades.tools import ToolRegistry
from airflow_llm_provider.cascades.tools.builtin import ToolServices
from airflow_llm_provider.cascades.usage import CallObserver, ModelPrice, UsageTracker

if TYPE_CHECKING:
    from pydantic_ai.models import Model

ModelFactory = Callable[[str | None], "Model"]
"""Model string (None = the default) -> a pydantic-ai Model."""


class PhaseFailed(RuntimeError):
    """A phase could not produce an acceptable output; the cascade fails with this message."""

    def __init__(self, phase: str, message: str) -> None:
        # The message becomes the run's error (XCom, CLI output, alerts): an upstream body quoting
        # a registered credential must not get that far, whichever concern built the message.
        super().__init__(redact(f"phase '{phase}': {message}"))
        self.phase = phase


@dataclass
class RunOptions:
    """How to run a cascade. Every field has a default that works offline."""

    model_factory: ModelFactory | None = None
    model: str | None = None
    """Overrides every phase's model (``--model`` on the CLI)."""
    tools: ToolRegistry | Mapping[str, Callable[..., Any]] | None = None
    template_context: Mapping[str, Any] = field(default_factory=dict)
    """Extra template variables, e.g. Airflow's ``ds``, ``data_interval_start``, ``params``."""
    max_concurrency: int = 5
    budget: Budget | None = None
    """Overrides the cascade's own ``budget``."""
    declared_price: ModelPrice | None = None
    """Price of a self-hosted model (the connection's ``extra.price``)."""
    cache: PhaseCache | None = None
    cache_scope: str = "run"
    """Key scope: a run id lets a task retry resume; ``shared`` reuses answers across runs."""
    cache_max_age_seconds: float | None = None
    memory: MemoryStore | None = None
    """Where ``memory:`` banks live (``cascades.memory.open_memory``); None: a local SQLite file
    under the phase cache's directory."""
    model_settings: Mapping[str, Any] | None = None
    base_dir: Path | None = None
    tool_path: Sequence[str | Path] = ()
    """More folders with tool and validator cascades, after the cascade's own (``--tool-path``,
    ``[llm_provider] tool_path``); see ``cascades/references.py``."""
    """Folder of the cascade file: ``sql:`` tool files are read relative to it."""
    on_event: Callable[[str], None] | None = None
    """Progress lines (the operator writes them to the task log)."""
    record: RunRecord | None = None
    """Filled in while the run goes (the operators' OpenLineage methods read it)."""
    call_observer: CallObserver | None = None
    """Told before and after every LLM call (the Airflow adapter's cost ledger and shared budgets)."""
    tool_services: ToolServices | None = None
    """What the built-in tools may use of the host: SQL connections, the artifact folder, the
    scratch root, whether unsandboxed code is allowed (``cascades/tools/builtin.py``)."""
    session_id: str | None = None
    """Names the run's session (scratch folder, session database); None: a fresh random id."""
    journal: ResponseJournal | None = None
    """Model responses of an earlier try of this run to replay, and where this run's are kept
    (``run/journal.py``): a run resumed after a human answered pays for nothing twice."""
    limits: Limits = field(default_factory=configured_limits)
    """Resource limits of the run and all its children (``cascades/limits.py``); by default the
    ``[llm_provider]`` settings."""


@dataclass
class RunRecord:
    """A live view of one run for whoever started it: the usage tracker (so a run that raised still
    tells what it spent), the models that answered (``system:model_name`` of the resolved model)
    and the winning sounding per phase. Filled in as the run goes; no prompt text in it."""

    usage: UsageTracker | None = None
    models: list[str] = field(default_factory=list)
    soundings_winners: dict[str, int] = field(default_factory=dict)


@dataclass
class PhaseRun:
    phase: str
    status: Literal["success", "failed", "cached"]
    duration_s: float
    attempts: int = 0
    route: str | None = None
    error: str | None = None


@dataclass
class CascadeResult:
    cascade_id: str
    status: Literal["success", "failed"]
    outputs: dict[str, Any]
    final: Any
    usage: dict[str, Any]
    error: str | None = None
    budget_exceeded: bool = False
    trace: list[PhaseRun] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``airflow-llm run`` and the operator's XCom.

        The error is scrubbed again here, and so are outputs: a tool phase's ``on_error`` output
        carries its error text, and a result may be built from texts that never passed
        :class:`PhaseFailed` (a budget stop, a child cascade's error)."""
        return {
            "status": self.status,
            "outputs": redact_value(self.outputs),
            "final": redact_value(self.final),
            "usage": self.usage,
            "error": redact(self.error) if self.error else self.error,
        }


@dataclass
class PhaseOutcome:
    """One phase run on its own (a task of a cascade rendered as a DAG)."""

    phase: str
    output: Any
    route: str | None
    usage: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)
    """The run's state after the phase (Windlass's ``state``: ``set_state`` writes and the
    upstream state it was given), handed on to the phases after it through XCom."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "output": redact_value(self.output),
            "route": self.route,
            "usage": self.usage,
            "state": redact_value(self.state),
        }
