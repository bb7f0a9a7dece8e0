"""The cascade file format as typed, frozen pydantic models.

Windlass-compatible for the core fields, plus our Airflow extensions. Every model forbids unknown
keys: Windlass silently drops them, which turns a typo into a feature that quietly does nothing.
Cross-phase rules (references, cycles, templates) live in ``validate.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

PHASE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
END = "end"
"""Handoff/routing target that ends the cascade (Windlass convention)."""
DEFAULT_MAX_PHASE_VISITS = 10
"""Loop guard when a cascade sets no `max_phase_visits` (Windlass has none; a runaway loop must end)."""

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


class PolyglotValidator(_Model):
    """An inline validator written as code (Windlass ``PolyglotValidatorConfig``): exactly one of the
    languages, or an explicit ``tool`` with ``inputs``. The code sees ``content`` and
    ``original_input`` and sets ``result = {"valid": bool, "reason": str}``."""

    python: str | None = None
    javascript: str | None = None
    sql: str | None = None
    clojure: str | None = None
    bash: str | None = None
    tool: str | None = None
    inputs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PolyglotValidator:
        given = [key for key in POLYGLOT_LANGUAGES if getattr(self, key) is not None]
        if self.tool is not None:
            given.append("tool")
        if len(given) != 1:
            raise ValueError(
                "an inline validator sets exactly one of python, javascript, sql, clojure, bash or tool"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.inputs is not None and self.tool is None:
            raise ValueError("`inputs` goes with `tool`")
        return self

    @property
    def language(self) -> str:
        """The language (or ``tool``) this validator is written in."""
        for key in (*POLYGLOT_LANGUAGES, "tool"):
            if getattr(self, key) is not None:
                return key
        raise AssertionError("validated to have exactly one")

    @property
    def label(self) -> str:
        """How logs and errors name an inline validator."""
        return f"inline {self.language} validator" if self.tool is None else f"tool {self.tool}"


POLYGLOT_LANGUAGES = ("python", "javascript", "sql", "clojure", "bash")

ValidatorRef = str | PolyglotValidator
"""A validator by name (``validators:``, a registered function, a validator cascade on the tool
path, ``python:mod.func``) or inline code."""


def validator_label(validator: ValidatorRef) -> str:
    return validator if isinstance(validator, str) else validator.label


class Rules(_Model):
    """The attempt/turn loop of an LLM phase."""

    max_turns: int = Field(1, ge=1, description="LLM turns per attempt (turn 2+ gets `turn_prompt`)")
    max_attempts: int = Field(1, ge=1, description="Attempts before the phase fails")
    loop_until: ValidatorRef | None = Field(None, description="Validator that must pass to stop looping")
    loop_until_prompt: str | None = Field(None, description="Replaces the auto-added validation goal")
    loop_until_silent: bool = Field(False, description="Do not tell the model about `loop_until`")
    retry_instructions: str | None = Field(None, description="Jinja text sent when retrying")
    turn_prompt: str | None = Field(None, description="Jinja text of turns 2+ (default: continue/refine)")

    _none_is_default = field_validator("max_turns", "max_attempts", mode="before")(
        lambda value: 1 if value is None else value
    )


class ModelConfig(_Model):
    """One model of multi-model soundings (``soundings.models`` as a map)."""

    factor: int = Field(1, ge=1, description="Soundings for this model")
    temperature: float | None = None
    max_tokens: int | None = Field(None, gt=0)


class CostAwareEvaluation(_Model):
    """Let the judge weigh cost against quality when soundings used different models."""

    enabled: bool = True
    quality_weight: float = Field(0.7, ge=0, le=1)
    cost_weight: float = Field(0.3, ge=0, le=1)
    show_costs_to_evaluator: bool = True
    cost_normalization: Literal["min_max", "z_score", "log_scale"] = "min_max"


class ParetoFrontier(_Model):
    """Pick the winner from the cost/quality Pareto frontier of the soundings."""

    enabled: bool = False
    policy: Literal["prefer_cheap", "prefer_quality", "balanced", "interactive"] = "balanced"
    show_frontier: bool = True
    quality_metric: str = "evaluator_score"
    include_dominated: bool = True


class Ward(_Model):
    """A validator run before (pre) or after (post) an LLM phase."""

    validator: ValidatorRef = Field(description="Validator name, python:module.func or inline code")
    mode: Literal["blocking", "retry", "advisory"] = "blocking"
    max_attempts: int = Field(1, ge=1, description="Accepted as in Windlass, where no code reads it")


class Reforge(_Model):
    """Refinement rounds after the soundings: the winner is honed by ``factor_per_step`` new
    soundings per step, each judged again."""

    steps: int = Field(1, ge=1)
    honing_prompt: str = Field(description="What to improve in each round")
    factor_per_step: int = Field(2, ge=1)
    mutate: bool = False
    evaluator_override: str | None = Field(None, description="Judge instructions for the rounds")
    threshold: Ward | None = Field(None, description="Stop early once this validator passes")


class Soundings(_Model):
    """Run the phase ``factor`` times and keep the best (evaluate) or merge them (aggregate)."""

    factor: int | str = Field(1, description="Attempts: an int >= 1 or a Jinja template")
    max_parallel: int = Field(3, ge=1)
    evaluator_instructions: str | None = Field(None, description="Jinja prompt of the judge")
    evaluator_model: str | None = Field(None, description="Judge model; default: the phase model")
    reforge: Reforge | None = None
    mutate: bool = Field(True, description="Vary the prompt of soundings 2+ (Windlass default: on)")
    mutation_mode: Literal["rewrite", "augment", "approach"] = "rewrite"
    mutations: list[str] | None = Field(None, description="Own mutation texts instead of the built-in")
    mode: Literal["evaluate", "aggregate"] = "evaluate"
    aggregator_instructions: str | None = None
    aggregator_model: str | None = None
    validator: ValidatorRef | None = Field(None, description="Pre-filter: only passing soundings are judged")
    models: list[str] | dict[str, ModelConfig] | None = Field(
        None, description="Models of the soundings: a list, or model -> {factor, temperature, max_tokens}"
    )
    model_strategy: str = Field("round_robin", description="round_robin, random or weighted")
    cost_aware_evaluation: CostAwareEvaluation | None = None
    pareto_frontier: ParetoFrontier | None = None
    evaluator: Literal["human", "hybrid"] | None = None
    human_eval: dict[str, Any] | None = None
    llm_prefilter: int | None = Field(None, ge=1)
    llm_prefilter_instructions: str | None = None

    @field_validator("factor", mode="before")
    @classmethod
    def _check_factor(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError("must be an integer >= 1 or a Jinja template string")
        if isinstance(value, int) and value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        if isinstance(value, str) and "{{" not in value:
            if value.strip().isdigit() and int(value) >= 1:
                return int(value)
            raise ValueError(f"{value!r} is neither an integer nor a Jinja template")
        return value

    @property
    def model_names(self) -> list[str]:
        """The models named in ``models`` (list or map), in file order."""
        return list(self.models or [])


class Wards(_Model):
    """Pre- and post-validators of an LLM phase (``turn`` wards are accepted; Windlass never runs them)."""

    pre: list[Ward] = Field(default_factory=list)
    post: list[Ward] = Field(default_factory=list)
    turn: list[Ward] = Field(default_factory=list)


class Handoff(_Model):
    """A phase this one may hand over to; ``end`` ends the cascade."""

    target: str
    description: str | None = None


ContextPart = Literal["images", "output", "messages", "state"]
AnchorPart = Literal["output", "callouts", "input", "errors"]


class ContextSource(_Model):
    """One phase's contribution to a phase's context, picked in detail."""

    phase: str
    include: list[ContextPart] = Field(default_factory=lambda: list[ContextPart](["images", "output"]))
    images_filter: Literal["all", "last", "last_n"] = "all"
    images_count: int = Field(1, ge=1)
    messages_filter: Literal["all", "assistant_only", "last_turn"] = "all"
    as_role: Literal["user", "system"] = "user"
    condition: str | None = Field(None, description="Jinja condition: include only when true")


class Anchors(_Model):
    """Context that auto mode always includes."""

    window: int = Field(3, ge=0)
    from_phases: list[str] = Field(default_factory=lambda: ["previous"])
    include: list[AnchorPart] = Field(
        default_factory=lambda: list[AnchorPart](["output", "callouts", "input"])
    )


class Selection(_Model):
    """How auto mode scores and picks earlier context."""

    strategy: Literal["heuristic", "semantic", "llm", "hybrid"] = "hybrid"
    max_tokens: int = Field(30000, gt=0)
    max_messages: int = Field(50, gt=0)
    recency_weight: float = 0.3
    keyword_weight: float = 0.4
    callout_weight: float = 0.3
    similarity_threshold: float = 0.5


class ContextSpec(_Model):
    """What earlier phases' outputs an LLM phase sees besides its templated instructions."""

    mode: Literal["explicit", "auto"] = "explicit"
    from_: list[str | ContextSource] = Field(
        default_factory=list,
        alias="from",
        description="Phase names, all/first/previous/prev, or {phase, include, ...}",
    )
    exclude: list[str] = Field(default_factory=list, description="Phases left out (useful with `all`)")
    include_input: bool = True
    anchors: Anchors | None = None
    selection: Selection | None = None

    @field_validator("from_", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str | dict) else value


class RetrySpec(_Model):
    """Retries of a deterministic phase (Windlass semantics, distinct from Airflow `retries`)."""

    max_attempts: int = Field(3, ge=1)
    backoff: Literal["none", "linear", "exponential"] = "linear"
    backoff_base_seconds: float = Field(1.0, ge=0)


class CascadeRef(_Model):
    """A child cascade run by a phase: before its LLM turns (``sub_cascades``) or in the background
    (``async_cascades``). ``ref`` is relative to the parent file."""

    ref: str = Field(min_length=1)
    input_map: dict[str, str] = Field(default_factory=dict, description="Child input -> parent value")
    context_in: bool = Field(True, description="The child gets the parent's state and input")


class SubCascade(CascadeRef):
    context_out: bool = Field(True, description="The child's result is merged into the parent's state")


class AsyncCascade(CascadeRef):
    trigger: Literal["on_start", "on_end"] = "on_start"


class OutputExtraction(_Model):
    """Pull a part of an LLM phase's output into ``state[store_as]`` with a regular expression."""

    pattern: str
    store_as: str = Field(min_length=1)
    required: bool = False
    format: Literal["text", "json", "code"] = "text"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"not a valid regular expression: {err}") from err
        return value


class IntraContext(_Model):
    """Per-turn context trimming inside a long LLM phase."""

    enabled: bool = True
    window: int = Field(5, ge=1)
    mask_observations_after: int = Field(3, ge=0)
    compress_loops: bool = True
    loop_history_limit: int = Field(3, ge=0)
    preserve_reasoning: bool = True
    preserve_errors: bool = True
    min_masked_size: int = Field(200, ge=0)


class RowMapping(_Model):
    """``for_each_row``: one child run per row of a session table."""

    table: str
    cascade: str | None = None
    instructions: str | None = None
    inputs: dict[str, Any] | None = None
    max_parallel: int = Field(5, ge=1)
    result_table: str | None = None
    on_error: Literal["continue", "fail_fast", "collect_errors"] = "continue"


class HumanInputOption(_Model):
    """One choice of a ``human_input`` of type ``choice``/``multi_choice`` (Windlass's)."""

    label: str
    value: str
    description: str | None = None
    requires_text: bool = False
    requires_comment: bool = False


class HumanInputConfig(_Model):
    """``human_input``: ask a human after the phase's output (Windlass's ``HumanInputConfig``)."""

    type: Literal[
        "confirmation", "choice", "multi_choice", "rating", "text", "form", "review", "auto", "htmx"
    ] = "confirmation"
    prompt: str | None = None
    options: list[HumanInputOption] | None = None
    max_rating: int = Field(5, ge=1, le=100)
    rating_labels: list[str] | None = None
    fields: list[dict[str, Any]] | None = None
    hint: str | None = None
    generator_prompt: str | None = None
    condition: str | None = Field(None, description="Jinja expression over state, output, input")
    timeout_seconds: int | None = Field(None, ge=1)
    on_timeout: Literal["abort", "continue", "default", "escalate"] = "abort"
    default_value: Any = None
    escalate_to: str | None = None
    capture_reasoning: bool = False
    capture_confidence: bool = False


class DecisionPointRoutingAction(_Model):
    to: str | None = None
    fail: bool = False
    inject: Literal["choice", "feedback", "context"] | None = None


class DecisionPointUIConfig(_Model):
    present_output: bool = True
    allow_text_fallback: bool = True
    max_options: int = Field(6, ge=1)
    layout: Literal["cards", "list", "buttons"] = "cards"


class DecisionPoints(_Model):
    """``decision_points``: the model may ask a human by writing a ``<decision>{json}</decision>``
    block (Windlass's ``DecisionPointConfig``)."""

    enabled: bool = True
    trigger: Literal["output", "error", "both"] = "output"
    ui: DecisionPointUIConfig = Field(default_factory=lambda: DecisionPointUIConfig.model_validate({}))
    routing: dict[str, str | DecisionPointRoutingAction] | None = None
    timeout_seconds: int = Field(3600, ge=1)
    on_error_prompt: str | None = None


class Phase(_Model):
    """One step: an LLM phase (``instructions``), a deterministic phase (``tool``) or a row fan-out
    (``for_each_row``)."""

    name: str = Field(pattern=PHASE_NAME_PATTERN)
    description: str | None = None
    handoffs: list[Handoff] = Field(default_factory=list)
    context: ContextSpec | None = None
    sub_cascades: list[SubCascade] = Field(default_factory=list)
    async_cascades: list[AsyncCascade] = Field(default_factory=list)
    # LLM phase
    instructions: str | None = Field(None, description="Jinja template: the system prompt; @file loads one")
    model: str | None = None
    tackle: list[str] = Field(default_factory=list, description="Tool names offered to the model")
    manifest_context: Literal["current", "full"] = "current"
    manifest_limit: int = Field(30, ge=1)
    use_native_tools: bool = False
    output_schema: dict[str, Any] | None = Field(None, description="JSON Schema of the output")
    rules: Rules | None = None
    soundings: Soundings | None = None
    wards: Wards | None = None
    output_extraction: OutputExtraction | None = None
    intra_context: IntraContext | None = None
    human_input: bool | HumanInputConfig | None = None
    decision_points: DecisionPoints | None = None
    # deterministic phase
    tool: str | None = Field(None, description="Registered tool, python:mod.func, sql:file.sql")
    inputs: dict[str, Any] | None = Field(None, description="Jinja values (alias: tool_inputs)")
    routing: dict[str, str] | None = Field(None, description="Result route -> phase name")
    on_error: str | dict[str, Any] | None = Field(
        None, description="Phase run when the tool fails, or an inline LLM fallback {instructions, ...}"
    )
    retry: RetrySpec | None = None
    timeout: str | float | None = Field(None, description="'30s', '5m', '1h' or seconds")
    # row fan-out
    for_each_row: RowMapping | None = None
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
    # Windlass spells the tool selector `tackle: manifest`; the list form means the same.
    _normalize_tackle = field_validator("tackle", mode="before")(
        lambda value: [MANIFEST] if value == MANIFEST else value
    )
    _check_durations = field_validator("timeout", "execution_timeout", mode="before")(_duration_or_none)

    @property
    def kind(self) -> Literal["llm", "tool", "rows"]:
        """``tool`` for deterministic phases, ``rows`` for ``for_each_row``, ``llm`` otherwise."""
        if self.tool is not None:
            return "tool"
        return "rows" if self.for_each_row is not None else "llm"

    @property
    def handoff_targets(self) -> list[str]:
        return [handoff.target for handoff in self.handoffs]

    @property
    def on_error_target(self) -> str | None:
        """The phase ``on_error`` names (not ``auto_fix``, not an inline fallback)."""
        if isinstance(self.on_error, str) and self.on_error != AUTO_FIX:
            return self.on_error
        return None

    @property
    def on_error_inline(self) -> dict[str, Any] | None:
        """The inline LLM fallback phase body of ``on_error: {instructions: ...}``."""
        if isinstance(self.on_error, dict) and AUTO_FIX not in self.on_error:
            return self.on_error
        return None


MANIFEST = "manifest"
AUTO_FIX = "auto_fix"


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


class TokenBudget(_Model):
    """Keep a phase's context within a token budget (Windlass ``token_budget``)."""

    max_total: int = Field(100000, gt=0)
    reserve_for_output: int = Field(4000, ge=0)
    strategy: Literal["sliding_window", "prune_oldest", "summarize", "fail"] = "sliding_window"
    warning_threshold: float = Field(0.8, gt=0, le=1)
    phase_overrides: dict[str, int] | None = None
    summarizer: dict[str, Any] | None = None


class ToolCachePolicy(_Model):
    """Caching of one tool's results."""

    enabled: bool = True
    ttl: int = Field(3600, gt=0, description="Seconds")
    key: Literal["args_hash", "query", "sql_hash", "custom"] = "args_hash"
    custom_key_fn: str | None = None
    hit_message: str | None = None
    invalidate_on: list[str] = Field(default_factory=list)


class ToolCaching(_Model):
    """Reuse deterministic tools' results for the same arguments (Windlass ``tool_caching``)."""

    enabled: bool = False
    storage: Literal["memory", "redis", "sqlite"] = "memory"
    global_ttl: int = Field(3600, gt=0)
    max_cache_size: int = Field(1000, gt=0)
    tools: dict[str, ToolCachePolicy] = Field(default_factory=dict)


class InterPhaseContext(_Model):
    """Auto-selected context between phases."""

    enabled: bool = True
    anchors: Anchors = Field(default_factory=lambda: Anchors.model_validate({}))
    selection: Selection = Field(default_factory=lambda: Selection.model_validate({}))


class AutoContext(_Model):
    """Cascade-wide defaults of automatic context management."""

    intra_phase: IntraContext | None = None
    inter_phase: InterPhaseContext | None = None


class _Trigger(_Model):
    name: str
    description: str | None = None


class CronTrigger(_Trigger):
    type: Literal["cron"] = "cron"
    schedule: str
    timezone: str = "UTC"
    inputs: dict[str, Any] | None = None
    enabled: bool = True


class SensorTrigger(_Trigger):
    type: Literal["sensor"]
    check: str
    args: dict[str, Any] = Field(default_factory=dict)
    poll_interval: str = "5m"
    poll_jitter: str = "0s"
    timeout: str = "24h"
    inputs: dict[str, Any] | None = None
    enabled: bool = True


class WebhookTrigger(_Trigger):
    type: Literal["webhook"]
    auth: str | None = None
    payload_schema: dict[str, Any] | None = Field(None, alias="schema")
    inputs: dict[str, Any] | None = None
    enabled: bool = True


class ManualTrigger(_Trigger):
    type: Literal["manual"]
    inputs_schema: dict[str, Any] | None = None


def _trigger_kind(value: Any) -> str:
    kind = value.get("type", "cron") if isinstance(value, dict) else getattr(value, "type", "cron")
    return kind if kind in ("cron", "sensor", "webhook", "manual") else "cron"


Trigger = Annotated[
    Annotated[CronTrigger, Tag("cron")]
    | Annotated[SensorTrigger, Tag("sensor")]
    | Annotated[WebhookTrigger, Tag("webhook")]
    | Annotated[ManualTrigger, Tag("manual")],
    Discriminator(_trigger_kind),
]
"""A Windlass trigger, told apart by ``type`` (``cron`` when absent, as in Windlass)."""


class Cascade(_Model):
    """A whole cascade: phases run from ``phases[0]`` along handoffs or list order."""

    cascade_id: str = Field(min_length=1)
    description: str | None = None
    inputs_schema: dict[str, str] = Field(default_factory=dict, description="Input name -> description")
    phases: list[Phase] = Field(min_length=1)
    validators: dict[str, ValidatorSpec] = Field(default_factory=dict)
    soundings: Soundings | None = Field(None, description="Run the whole cascade N times, keep the best")
    memory: str | None = Field(None, min_length=1, description="Memory bank kept across runs")
    token_budget: TokenBudget | None = None
    tool_caching: ToolCaching | None = None
    auto_context: AutoContext | None = None
    triggers: list[Trigger] = Field(
        default_factory=list, description="Windlass triggers; cron schedules a DAG"
    )
    research_db: str | None = None
    narrator: dict[str, Any] | None = None
    max_phase_visits: int | None = Field(
        None, ge=1, description=f"Loop guard: visits per phase (default {DEFAULT_MAX_PHASE_VISITS})"
    )
    defaults: Defaults = Field(default_factory=Defaults)
    budget: Budget | None = None
    budgets: list[SharedBudgetSpec] = Field(
        default_factory=list, description="Shared budgets (run under Airflow): dag_run, dag_day, tag_day"
    )
    airflow: AirflowSettings | None = None
    connections: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="Connection ids the model may pass to tools (conn_id/connection); see docs/security.md",
    )

    def missing_inputs(self, inputs: Mapping[str, Any]) -> str | None:
        """What is missing from ``inputs`` that ``inputs_schema`` names, as one message, or None.
        Windlass would render such inputs empty; a top-level run refuses before spending."""
        missing = [name for name in self.inputs_schema if name not in inputs]
        if not missing:
            return None
        listed = "; ".join(f"'{name}' ({self.inputs_schema[name]})" for name in missing)
        return f"cascade {self.cascade_id} needs input {listed}"

    def cron_trigger(self) -> CronTrigger | None:
        """The first enabled Windlass cron trigger: the schedule of the rendered DAG when
        ``airflow.schedule`` is not set (Windlass's own runner ignores triggers)."""
        return next((t for t in self.triggers if isinstance(t, CronTrigger) and t.enabled), None)

    def phase(self, name: str) -> Phase:
        """The phase called ``name``."""
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise KeyError(name)
