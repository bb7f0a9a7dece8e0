"""airflow-llm-provider: LLM cascades, cost control, deployments, Vault secrets and lineage for Airflow.

This module stays import-cheap on purpose: Airflow imports every provider while parsing DAGs,
so nothing heavy (pydantic-ai, openai, hvac, sqlparse) may be imported here.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
