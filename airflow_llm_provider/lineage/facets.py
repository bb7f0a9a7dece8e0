"""Our custom OpenLineage facets: what an LLM cascade used (run facet) and what it is (job facet).

Import this module only inside the lineage methods (``get_openlineage_facets_on_*``): it imports
the OpenLineage client, an optional dependency. Facets follow OpenLineage's custom facet rules:
attrs classes deriving from the client's ``RunFacet``/``JobFacet`` (so ``_producer`` and
``_schemaURL`` are filled in), camelCase fields, a key prefixed with our name
(``airflowLlm_usage``, ``airflowLlm_cascade``) and a schema URL pointing at the JSON Schema shipped
in ``airflow_llm_provider/lineage/schemas/``.

Privacy: no prompt, instruction, tool input or output text is ever put in a facet; prompts appear
only as SHA-256 hashes, and the whole cascade only as the hash of its canonical JSON.

Use::

    from airflow_llm_provider.lineage.facets import cascade_facets

    run_facets, job_facets = cascade_facets(cascade, usage=result.usage, ...)
    return OperatorLineage(inputs=..., outputs=..., run_facets=run_facets, job_facets=job_facets)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from attrs import define, field
from openlineage.client.facet_v2 import JobFacet, RunFacet

from airflow_llm_provider import __version__

if TYPE_CHECKING:
    from airflow_llm_provider.cascades.spec import Cascade

REPOSITORY = "https://github.com/airflow-llm-provider/airflow-llm-provider"
PRODUCER = f"{REPOSITORY}/tree/{__version__}"
SCHEMA_BASE = f"{REPOSITORY}/blob/{__version__}/airflow_llm_provider/lineage/schemas"
USAGE_FACET = "airflowLlm_usage"
CASCADE_FACET = "airflowLlm_cascade"


def _schema(name: str) -> str:
    return f"{SCHEMA_BASE}/{name}.json#/$defs/{name}"


@define
class LlmUsageRunFacet(RunFacet):
    """What one run (a whole cascade or one phase task) spent on LLM calls."""

    models: list[str] = field(factory=list)
    providers: list[str] = field(factory=list)
    requests: int = 0
    inputTokens: int = 0
    outputTokens: int = 0
    costUsd: float = 0.0
    unpricedCalls: int = 0
    cacheHits: int = 0
    soundingsWinners: dict[str, int] = field(factory=dict)
    budget: dict[str, Any] | None = None
    status: str | None = None

    _additional_skip_redact = ["models", "providers", "soundingsWinners", "budget", "status"]

    @staticmethod
    def _get_schema() -> str:
        return _schema("LlmUsageRunFacet")

    def __attrs_post_init__(self) -> None:
        if not self._producer:
            self._producer = PRODUCER
        super().__attrs_post_init__()


@define
class LlmCascadeJobFacet(JobFacet):
    """What the job is: the cascade's phase graph and a content hash, prompts only as hashes."""

    cascadeId: str
    contentHash: str
    phases: list[dict[str, Any]] = field(factory=list)
    phase: str | None = None
    """The phase this task runs (a cascade rendered as a DAG); absent for a whole-cascade task."""

    _additional_skip_redact = ["cascadeId", "contentHash", "phases", "phase"]

    @staticmethod
    def _get_schema() -> str:
        return _schema("LlmCascadeJobFacet")

    def __attrs_post_init__(self) -> None:
        if not self._producer:
            self._producer = PRODUCER
        super().__attrs_post_init__()


def text_hash(text: str) -> str:
    """``sha256:<hex>`` of a text (prompt, instructions): lets users compare, never read."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def cascade_hash(cascade: Cascade) -> str:
    """``sha256:<hex>`` of the cascade's canonical JSON (changes whenever any field changes)."""
    canonical = json.dumps(
        cascade.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
    )
    return text_hash(canonical)


def _provider_of(model: str) -> str | None:
    provider, sep, _ = model.partition(":")
    return provider if sep and provider else None


def usage_run_facet(
    usage: Mapping[str, Any],
    *,
    models: Iterable[str] = (),
    soundings_winners: Mapping[str, int] | None = None,
    budget_limits: Mapping[str, float | int | None] | None = None,
    budget_exceeded: bool = False,
    status: str | None = None,
) -> LlmUsageRunFacet:
    """The run facet from the usage dict of a cascade/phase result (``UsageTotals.as_dict()``).

    :param models: model strings used (``provider:model``; the provider part becomes ``providers``).
    :param soundings_winners: phase -> index (0-based) of the winning sounding attempt.
    :param budget_limits: ``{"max_tokens": ..., "max_cost_usd": ...}`` (the cascade's budget).
    """
    model_list = list(dict.fromkeys(m for m in models if m))
    providers = list(dict.fromkeys(p for p in map(_provider_of, model_list) if p))
    budget = None
    if budget_limits is not None or budget_exceeded:
        limits = {k: v for k, v in (budget_limits or {}).items() if v is not None}
        budget = {
            "maxTokens": limits.get("max_tokens"),
            "maxCostUsd": limits.get("max_cost_usd"),
            "exceeded": bool(budget_exceeded),
        }
    return LlmUsageRunFacet(
        models=model_list,
        providers=providers,
        requests=int(usage.get("requests", 0) or 0),
        inputTokens=int(usage.get("input_tokens", 0) or 0),
        outputTokens=int(usage.get("output_tokens", 0) or 0),
        costUsd=round(float(usage.get("cost_usd", 0.0) or 0.0), 6),
        unpricedCalls=int(usage.get("unpriced_calls", 0) or 0),
        cacheHits=int(usage.get("cache_hits", 0) or 0),
        soundingsWinners={str(k): int(v) for k, v in (soundings_winners or {}).items()},
        budget=budget,
        status=status,
    )


def cascade_job_facet(cascade: Cascade, task_phase: str | None = None) -> LlmCascadeJobFacet:
    """The job facet: phase graph (names, kinds, models, tools, edges) and hashes, no prompt text.

    :param task_phase: for a task that runs one phase of the cascade, that phase's name.
    """
    from airflow_llm_provider.cascades.graph import phase_dependencies

    dependencies = phase_dependencies(cascade)
    phases: list[dict[str, Any]] = []
    for phase in cascade.phases:
        entry: dict[str, Any] = {
            "name": phase.name,
            "kind": "tool" if phase.tool else "llm",
            "dependsOn": sorted(dependencies.get(phase.name, ())),
            "handoffs": [h.target for h in phase.handoffs],
        }
        if phase.tool:
            # The tool's name or reference only (python:mod.func, sql:file.sql), never its inputs.
            entry["tool"] = phase.tool
        else:
            entry["model"] = phase.model or cascade.defaults.model
            entry["tools"] = list(phase.tackle)
        if phase.routing:
            entry["routes"] = dict(phase.routing)
        if phase.on_error_target:
            entry["onError"] = phase.on_error_target
        if phase.map_over:
            entry["mapOver"] = phase.map_over
        if phase.soundings is not None:
            entry["soundings"] = {"factor": phase.soundings.factor, "mode": phase.soundings.mode}
        if phase.instructions:
            entry["instructionsHash"] = text_hash(phase.instructions)
        phases.append(entry)
    return LlmCascadeJobFacet(
        cascadeId=cascade.cascade_id, contentHash=cascade_hash(cascade), phases=phases, phase=task_phase
    )


def models_of(cascade: Cascade, phases: Iterable[str] | None = None) -> list[str]:
    """The model strings the cascade's LLM phases name (all phases, or only ``phases``)."""
    wanted = set(phases) if phases is not None else None
    found: list[str] = []
    for phase in cascade.phases:
        if phase.tool or (wanted is not None and phase.name not in wanted):
            continue
        model = phase.model or cascade.defaults.model
        if model:
            found.append(model)
        if phase.soundings is not None:
            found.extend(phase.soundings.models or [])
            for extra in (phase.soundings.evaluator_model, phase.soundings.aggregator_model):
                if extra:
                    found.append(extra)
    return list(dict.fromkeys(found))


def cascade_facets(
    cascade: Cascade,
    *,
    usage: Mapping[str, Any] | None = None,
    models: Iterable[str] | None = None,
    soundings_winners: Mapping[str, int] | None = None,
    budget_exceeded: bool = False,
    status: str | None = None,
    phases: Iterable[str] | None = None,
    budget_limits: Mapping[str, float | int | None] | None = None,
    task_phase: str | None = None,
) -> tuple[dict[str, RunFacet], dict[str, JobFacet]]:
    """``(run_facets, job_facets)`` for an ``OperatorLineage`` of a cascade task.

    :param usage: the result's usage dict; ``None`` (e.g. on start) emits no run facet.
    :param models: the models actually used; default: those the cascade names (for ``phases``).
    :param phases: for a phase task, the phase(s) it ran (limits the default ``models``).
    :param budget_limits: the budget the run had (an operator's ``budget=`` overrides the
        cascade's); default: the cascade's ``budget``.
    :param task_phase: the phase a rendered-DAG task runs (``phase`` in the job facet).
    """
    job: dict[str, JobFacet] = {CASCADE_FACET: cascade_job_facet(cascade, task_phase)}
    run: dict[str, RunFacet] = {}
    if usage is not None:
        if budget_limits is None and cascade.budget is not None:
            budget_limits = cascade.budget.model_dump()
        run[USAGE_FACET] = usage_run_facet(
            usage,
            models=models if models is not None else models_of(cascade, phases),
            soundings_winners=soundings_winners,
            budget_limits=budget_limits,
            budget_exceeded=budget_exceeded,
            status=status,
        )
    return run, job
