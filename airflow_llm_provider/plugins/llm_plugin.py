"""The provider's AirflowPlugin, registered through the ``airflow.plugins`` entry point.

It is the one place where UI views, macros and listeners of this provider attach to Airflow.
Later capabilities (the LLM-cost page, lineage listeners) add themselves here.
"""

from __future__ import annotations

from airflow.providers.common.compat.sdk import AirflowPlugin

from airflow_llm_provider import __version__


def provider_version() -> str:
    """``{{ macros.llm_provider.provider_version() }}``: the installed provider version."""
    return __version__


class LLMProviderPlugin(AirflowPlugin):
    name = "llm_provider"
    macros = [provider_version]
