"""Cascades: LLM workflows in the Windlass file format, validated strictly before anything runs.

No Airflow import here or below: the engine is tested and used without a scheduler.
"""

from __future__ import annotations

from airflow_llm_provider.cascades.errors import CascadeValidationError, ValidationIssue
from airflow_llm_provider.cascades.loader import check_cascade, load_cascade
from airflow_llm_provider.cascades.spec import Cascade, Phase

__all__ = ["Cascade", "CascadeValidationError", "Phase", "ValidationIssue", "check_cascade", "load_cascade"]
