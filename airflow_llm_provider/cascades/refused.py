"""Windlass keys we refuse by name, keys we accept with a warning, and which models are Windlass's.

A refused key is an error, never silently ignored: a cascade that relies on a feature we do not
run must not run without it. Two kinds:

- ``CANNOT``: the feature cannot work on Airflow (voice, a live browser, image models); the
  message says why.
- ``NOT_YET``: planned; the message names the feature so the migration report can count it.

Keys Windlass's own models do not know (it drops them silently) are accepted with a warning,
unless they look like a typo of a real key: then the did-you-mean error stays.
"""

from __future__ import annotations

_NOT_YET = "is not supported by airflow-llm-provider yet"
_CANNOT = "cannot run on Airflow"

CANNOT: dict[str, dict[str, str]] = {
    "Cascade": {
        "narrator": f"`narrator` (Windlass voice commentary) {_CANNOT}: it speaks through Windlass's "
        "audio player; remove it (the cascade's result does not depend on it)",
        "cells": "`cells` (later Windlass/LARS name) is not accepted; use `phases`",
    },
    "Phase": {
        "narrator": f"`narrator` (Windlass voice commentary) {_CANNOT}: it speaks through Windlass's "
        "audio player",
        "browser": f"`browser` (Windlass browser automation) {_CANNOT}: it drives a live browser "
        "session of Windlass's UI server",
        "image_config": f"`image_config` (image generation models) {_CANNOT}: pydantic-ai and the "
        "`pydanticai` connection serve text models only",
        "traits": "`traits` (later Windlass name) is not accepted; use `tackle`",
        "skills": "`skills` (later Windlass/LARS name) is not accepted; use `tackle`",
        "candidates": "`candidates` (later Windlass name) is not accepted; use `soundings`",
        "takes": "`takes` (later Windlass/LARS name) is not accepted; use `soundings`",
    },
}
"""Model name -> key -> why it can never run here."""

NOT_YET: dict[str, dict[str, str]] = {
    "Cascade": {
        "research_db": f"`research_db` (Windlass research sessions) {_NOT_YET}",
    },
    "Phase": {
        "rag": f"`rag` (Windlass RAG) {_NOT_YET}",
    },
    "ValidatorSpec": {
        language: f"polyglot validators (`{language}`) belong in `wards` or `rules.loop_until`, not in "
        "`validators:` (Windlass's `validators:` entries are LLM instructions)"
        for language in ("python", "javascript", "sql", "clojure", "bash", "tool")
    },
}
"""Model name -> key -> what is not implemented yet."""

REFUSED: dict[str, dict[str, str]] = {
    model: {**CANNOT.get(model, {}), **NOT_YET.get(model, {})} for model in {*CANNOT, *NOT_YET}
}
"""Model name -> refused key -> message (both kinds)."""

_BROWSER = (
    "drives a live browser through Windlass's Rabbitize server, which has no counterpart on an Airflow worker"
)
_VOICE = "speaks or listens through Windlass's audio player and ElevenLabs/OpenRouter voice APIs"
_RAG = "searches Windlass's own RAG store (ClickHouse), which an Airflow deployment does not have"
_RESEARCH = "reads and writes Windlass's research database (ClickHouse sessions)"

UNREGISTERED_TOOLS: dict[str, str] = {
    name: f"`{name}` is not offered to the model: it {_VOICE}. Windlass registers it only when "
    "those voice keys are configured and silently drops it from `tackle` otherwise; so does this "
    "provider (the phase runs without it)"
    for name in ("say", "listen", "transcribe_audio", "process_voice_recording")
}
"""Windlass tools that exist only with optional credentials: dropped from ``tackle`` with a
warning, as Windlass drops them; a ``tool:`` phase naming one is refused (REFUSED_TOOLS)."""

REFUSED_TOOLS: dict[str, str] = {
    **{
        name: f"Windlass built-in tool '{name}' {_CANNOT}: it {_BROWSER}"
        for name in (
            "rabbitize_start",
            "rabbitize_execute",
            "rabbitize_extract",
            "rabbitize_close",
            "rabbitize_status",
            "control_browser",
            "extract_page_content",
            "get_browser_status",
            "take_screenshot",
        )
    },
    **{
        name: f"Windlass built-in tool '{name}' {_CANNOT}: it {_VOICE}"
        for name in ("say", "listen", "transcribe_audio", "process_voice_recording")
    },
    **{
        name: f"Windlass built-in tool '{name}' {_CANNOT}: it {_RAG}"
        for name in ("rag_search", "rag_read_chunk", "rag_list_sources", "sql_rag_search")
    },
    **{
        name: f"Windlass built-in tool '{name}' {_CANNOT}: it {_RESEARCH}"
        for name in (
            "research_query",
            "research_execute",
            "save_research_session",
            "list_research_sessions",
            "get_research_session",
        )
    },
}
"""Windlass built-in tools refused by name, with the reason (validate refuses the cascade)."""

WARNED: dict[str, dict[str, str]] = {
    "Phase": {
        "callouts": "`callouts` (Windlass UI annotation) is ignored: it labels messages in Windlass's UI",
        "ui_mode": "`ui_mode` (Windlass UI hint) is ignored",
        "audibles": "`audibles` (live steering from Windlass's UI) is ignored: nobody can inject "
        "feedback mid-phase on Airflow, which is how the phase runs in Windlass when nobody does",
    },
    "Wards": {"turn": "`turn` wards are ignored, as in Windlass, which never runs them"},
}
"""Model name -> key accepted with a warning -> message."""

WINDLASS_MODELS = frozenset(
    {
        "Cascade",
        "Phase",
        "Rules",
        "Soundings",
        "ModelConfig",
        "CostAwareEvaluation",
        "ParetoFrontier",
        "Reforge",
        "Ward",
        "Wards",
        "Handoff",
        "ContextSpec",
        "ContextSource",
        "Anchors",
        "Selection",
        "RetrySpec",
        "SubCascade",
        "AsyncCascade",
        "OutputExtraction",
        "IntraContext",
        "HumanInputOption",
        "HumanInputConfig",
        "DecisionPointRoutingAction",
        "DecisionPointUIConfig",
        "DecisionPoints",
        "RowMapping",
        "TokenBudget",
        "ToolCachePolicy",
        "ToolCaching",
        "InterPhaseContext",
        "AutoContext",
        "CronTrigger",
        "SensorTrigger",
        "WebhookTrigger",
        "ManualTrigger",
        "ValidatorSpec",
        "PolyglotValidator",
    }
)
"""Models that mirror Windlass's. An unknown key in them is dropped by Windlass, so we accept it
with a warning (unless it looks like a typo); our own extensions (budgets, airflow, defaults) stay
strict, because a misspelt limit must never be ignored."""
