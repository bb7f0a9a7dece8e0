"""The cascade file format as typed, frozen pydantic models.

Windlass-compatible for the core fields, plus our Airflow extensions. Every model forbids unknown
keys: Windlass silently drops them, which turns a typo into a feature that quietly does nothing.
Cross-phase rules (references, cycles, templates) live in ``validate.py``.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PHASE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
END = "end"
"""Handoff/routing target that ends the cascade (Windlass convention)."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(value: object) -> float:
    """Seconds in ``"30s"``/``"5m"``/``"1h"`` (or a bare positive number of seconds)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '30s', '5m' or '1h'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration like '30s', '5m' or '1h'")
    if seconds <= 0:
        raise ValueError("a duration must be greater than 0")
    return seconds


def _duration_or_none(value: object) -> object:
    if value is None:
        return None
    parse_duration(value)
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rules(_Model):
    """The attempt/turn loop of an LLM phase."""

    max_turns: int = Field(1, ge=1, description="LLM turns (with tool calls) per attempt")
    max_attempts: int = Field(1, ge=1, description="Attempts before the phase fails")
    loop_until: str | None = Field(None, description="Validator that must pass to stop looping")
    retry_instructions: str | None = Field(None, description="Jinja text sent when retrying")


class Soundings(_Model):
    """Run the phase ``factor`` times and keep the best (evaluate) or merge them (aggregate)."""

    factor: int | str = Field(1, description="Attempts: an int >= 1 or a Jinja template")
    max_parallel: int = Field(3, ge=1)
    evaluator_instructions: str | None = Field(None, description="Jinja prompt of the judge")
    evaluator_model: str | None = Field(None, description="Judge model; default: the phase model")
    mode: Literal["evaluate", "aggregate"] = "evaluate"
    aggregator_instructions: str | None = None
    aggregator_model: str | None = None
    models: list[str] | None = Field(None, description="Models used round-robin over the attempts")
    mutate: bool = Field(False, description="Prompt mutations; off unless asked (Windlass: on)")

    @field_validator("factor", mode="before")
    @classmethod
    def _check_factor(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError("must be an integer >= 1 or a Jinja template string")
        if isinstance(value, int) and value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        if isinstance(value, str) and "{{" not in value:
            raise ValueError(f"{value!r} is neither an integer nor a Jinja template")
        return value


class Ward(_Model):
    """A validator run before (pre) or after (post) an LLM phase."""

    validator: str = Field(description="Name in `validators:` or `python:module.func`")
    mode: Literal["blocking", "retry", "advisory"] = "blocking"


class Wards(_Model):
    """Pre- and post-validators of an LLM phase."""

    pre: list[Ward] = Field(default_factory=list)
    post: list[Ward] = Field(default_factory=list)


class Handoff(_Model):
    """A phase this one may hand over to; ``end`` ends the cascade."""

    target: str
    description: str | None = None


class ContextSpec(_Model):
    """What earlier phases' outputs an LLM phase sees besides its templated instructions."""

    from_: list[str] = Field(
        default_factory=list,
        alias="from",
        description="Phase names or all/first/previous/prev",
    )
    include_input: bool = True

    @field_validator("from_", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class RetrySpec(_Model):
    """Retries of a deterministic phase (Windlass semantics, distinct from Airflow `retries`)."""

    max_attempts: int = Field(3, ge=1)
    backoff: Literal["none", "linear", "exponential"] = "linear"
    backoff_base_seconds: float = Field(1.0, ge=0)


class Phase(_Model):
    """One step: an LLM phase (``instructions``) or a deterministic phase (``tool``)."""

    name: str = Field(pattern=PHASE_NAME_PATTERN)
    description: str | None = None
    handoffs: list[Handoff] = Field(default_factory=list)
    context: ContextSpec | None = None
    # LLM phase
    instructions: str | None = Field(None, description="Jinja template: the system prompt")
    model: str | None = None
    tackle: list[str] = Field(default_factory=list, description="Tool names offered to the model")
    use_native_tools: bool = False
    output_schema: dict[str, Any] | None = Field(None, description="JSON Schema of the output")
    rules: Rules | None = None
    soundings: Soundings | None = None
    wards: Wards | None = None
    # deterministic phase
    tool: str | None = Field(None, description="Registered tool, python:mod.func, sql:file.sql")
    inputs: dict[str, Any] | None = Field(None, description="Jinja values (alias: tool_inputs)")
    routing: dict[str, str] | None = Field(None, description="Result route -> phase name")
    on_error: str | None = Field(None, description="Phase run when the tool fails")
    retry: RetrySpec | None = None
    timeout: str | float | None = Field(None, description="'30s', '5m', '1h' or seconds")
    # Airflow extensions
    map_over: str | None = Field(None, description="'phase' or 'phase.key': one task per item")
    pool: str | None = None
    retries: int | None = Field(None, ge=0, description="Airflow task retries")
    execution_timeout: str | float | None = None

    _normalize_handoffs = field_validator("handoffs", mode="before")(
        lambda value: (
            [{"target": item} if isinstance(item, str) else item for item in value]
            if isinstance(value, list)
            else value
        )
    )
    _check_durations = field_validator("timeout", "execution_timeout", mode="before")(_duration_or_none)

    @property
    def kind(self) -> Literal["llm", "tool"]:
        """``tool`` for deterministic phases, ``llm`` otherwise."""
        return "tool" if self.tool is not None else "llm"

    @property
    def handoff_targets(self) -> list[str]:
        return [handoff.target for handoff in self.handoffs]


class ValidatorSpec(_Model):
    """An inline LLM validator, answering ``{"valid": bool, "reason": str}``."""

    instructions: str
    model: str | None = None
    max_turns: int = Field(1, ge=1)


class Defaults(_Model):
    """Cascade-wide defaults for LLM phases."""

    model: str | None = None
    llm_conn_id: str | None = None


class Budget(_Model):
    """Hard limits for one cascade run."""

    max_tokens: int | None = Field(None, gt=0)
    max_cost_usd: float | None = Field(None, gt=0)


class SharedBudgetSpec(_Model):
    """A budget shared with other tasks (enforced by the Airflow adapter against the cost ledger):
    per DAG run, per DAG per UTC day, or per tag (team) per day."""

    scope: Literal["dag_run", "dag_day", "tag_day"]
    max_cost_usd: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, gt=0)
    warn_at: float = Field(0.8, ge=0, lt=1)
    tag: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _complete(self) -> SharedBudgetSpec:
        if self.max_cost_usd is None and self.max_tokens is None:
            raise ValueError("set max_cost_usd or max_tokens (or both)")
        if self.scope == "tag_day" and not self.tag:
            raise ValueError("a tag_day budget names the tag (team) it counts")
        return self


class AirflowSettings(_Model):
    """DAG arguments used when the cascade is rendered as an Airflow DAG."""

    dag_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$")
    schedule: str | None = None
    start_date: datetime | date | None = None
    catchup: bool = False
    tags: list[str] = Field(default_factory=list)
    default_args: dict[str, Any] = Field(default_factory=dict)
    max_active_runs: int | None = Field(None, ge=1)
    params: dict[str, Any] = Field(default_factory=dict)


class Cascade(_Model):
    """A whole cascade: phases run from ``phases[0]`` along handoffs or list order."""

    cascade_id: str = Field(min_length=1)
    description: str | None = None
    inputs_schema: dict[str, str] = Field(default_factory=dict, description="Input name -> description")
    phases: list[Phase] = Field(min_length=1)
    validators: dict[str, ValidatorSpec] = Field(default_factory=dict)
    max_phase_visits: int | None = Field(None, ge=1, description="Loop guard; required by handoff cycles")
    defaults: Defaults = Field(default_factory=Defaults)
    budget: Budget | None = None
    budgets: list[SharedBudgetSpec] = Field(
        default_factory=list, description="Shared budgets (run under Airflow): dag_run, dag_day, tag_day"
    )
    airflow: AirflowSettings | None = None

    def phase(self, name: str) -> Phase:
        """The phase called ``name``."""
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise KeyError(name)
