"""Windlass keys we refuse by name, and cosmetic keys we accept with a warning.

A refused key is an error, never silently ignored: a cascade that relies on RAG or human input
must not run without it.
"""

from __future__ import annotations

_NOT_YET = "is not supported by airflow-llm-provider yet"

REFUSED: dict[str, dict[str, str]] = {
    "Cascade": {
        "soundings": f"cascade-level `soundings` (whole-cascade runs) {_NOT_YET}; set soundings on a phase",
        "triggers": f"`triggers` (Windlass triggers) {_NOT_YET}; use `airflow.schedule`",
        "memory": f"`memory` (Windlass memory) {_NOT_YET}",
        "token_budget": f"`token_budget` (Windlass context budget) {_NOT_YET}; `budget` caps a run",
        "tool_caching": f"`tool_caching` (Windlass tool cache) {_NOT_YET}",
        "research_db": f"`research_db` (Windlass research DB) {_NOT_YET}",
        "narrator": f"`narrator` (Windlass narrator) {_NOT_YET}",
        "auto_context": f"`auto_context` (Windlass auto context) {_NOT_YET}",
        "cells": "`cells` (later Windlass/LARS name) is not accepted; use `phases`",
    },
    "Phase": {
        "for_each_row": f"`for_each_row` (Windlass SQL row fan-out) {_NOT_YET}; use `map_over`",
        "rag": f"`rag` (Windlass RAG) {_NOT_YET}",
        "image_config": f"`image_config` (Windlass image models) {_NOT_YET}",
        "human_input": f"`human_input` (Windlass human-in-the-loop) {_NOT_YET}",
        "async_cascades": f"`async_cascades` (Windlass fire-and-forget cascades) {_NOT_YET}",
        "sub_cascades": "`sub_cascades` (Windlass) is not supported; run the child as a phase with "
        "`tool: cascade:child.yaml`, or offer it to the model with `tackle: [cascade:child.yaml]`",
        "output_extraction": f"`output_extraction` (Windlass regex extraction) {_NOT_YET}",
        "memory": f"`memory` (Windlass memory) {_NOT_YET}",
        "token_budget": f"`token_budget` (Windlass context budget) {_NOT_YET}",
        "narrator": f"`narrator` (Windlass narrator) {_NOT_YET}",
        "audibles": f"`audibles` (Windlass UI feature) {_NOT_YET}",
        "decision_points": f"`decision_points` (Windlass UI decisions) {_NOT_YET}",
        "browser": f"`browser` (Windlass browser automation) {_NOT_YET}",
        "intra_context": f"`intra_context` (Windlass per-turn context) {_NOT_YET}",
        "manifest_context": f"`manifest_context` (Windlass manifest tackle) {_NOT_YET}",
        "manifest_limit": f"`manifest_limit` (Windlass manifest tackle) {_NOT_YET}",
        "traits": "`traits` (later Windlass name) is not accepted; use `tackle`",
        "skills": "`skills` (later Windlass/LARS name) is not accepted; use `tackle`",
        "candidates": "`candidates` (later Windlass name) is not accepted; use `soundings`",
        "takes": "`takes` (later Windlass/LARS name) is not accepted; use `soundings`",
    },
    "Rules": {
        "loop_until_prompt": f"`loop_until_prompt` (Windlass) {_NOT_YET}",
        "loop_until_silent": f"`loop_until_silent` (Windlass) {_NOT_YET}",
        "turn_prompt": f"`turn_prompt` (Windlass follow-up turns) {_NOT_YET}",
    },
    "Soundings": {
        "reforge": f"`reforge` (Windlass iterative refinement) {_NOT_YET}",
        "evaluator": f"`evaluator` (Windlass human/hybrid evaluation) {_NOT_YET}",
        "pareto_frontier": f"`pareto_frontier` (Windlass) {_NOT_YET}",
        "cost_aware_evaluation": f"`cost_aware_evaluation` (Windlass) {_NOT_YET}",
        "mutation_mode": f"`mutation_mode` (Windlass prompt mutations) {_NOT_YET}",
        "mutations": f"`mutations` (Windlass prompt mutations) {_NOT_YET}",
        "validator": f"`validator` (Windlass sounding pre-filter) {_NOT_YET}",
        "model_strategy": f"`model_strategy` (Windlass) {_NOT_YET}; models are used round-robin",
    },
    "Wards": {"turn": f"`turn` wards (never run by Windlass either) {_NOT_YET}"},
    "ContextSpec": {
        "mode": f"context `mode` (Windlass auto context) {_NOT_YET}",
        "exclude": f"context `exclude` (Windlass) {_NOT_YET}",
    },
    "ValidatorSpec": {
        language: f"polyglot inline validators (`{language}`) {_NOT_YET}; use `python:module.func`"
        for language in ("python", "javascript", "sql", "clojure", "bash", "tool")
    },
}
"""Model name -> refused key -> message."""

WARNED: dict[str, dict[str, str]] = {
    "Phase": {
        "callouts": "`callouts` (Windlass UI annotation) is ignored",
        "ui_mode": "`ui_mode` (Windlass UI hint) is ignored",
    },
}
"""Model name -> cosmetic key accepted with a warning -> message."""
