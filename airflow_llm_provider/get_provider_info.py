"""The provider's single registry, read by Airflow's ProvidersManager through our entry point.

Every hook, operator, connection type, plugin and config option we ship is declared here once;
``airflow providers get airflow-llm-provider --full`` prints it back.
"""

from __future__ import annotations

from typing import Any

from airflow_llm_provider import __version__

INTEGRATION_LLM = "LLM (pydantic-ai)"
DOCS_URL = "https://github.com/airflow-llm-provider/airflow-llm-provider/tree/main/docs"


def get_provider_info() -> dict[str, Any]:
    return {
        # Must equal the canonical distribution name, or Airflow refuses the provider.
        "package-name": "airflow-llm-provider",
        "name": "LLM Provider",
        "description": (
            "LLM cascades on Airflow with cost control, Qubinode and multi-cloud deployments, "
            "a caching Vault secrets backend and OpenLineage facets."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION_LLM,
                "external-doc-url": f"{DOCS_URL}/llm.md",
                "tags": ["ai"],
            },
        ],
        "hooks": [
            {
                "integration-name": INTEGRATION_LLM,
                "python-modules": ["airflow_llm_provider.hooks.llm"],
            },
        ],
        "plugins": [
            {
                "name": "llm_provider",
                "plugin-class": "airflow_llm_provider.plugins.llm_plugin.LLMProviderPlugin",
            },
        ],
        "config": {
            "llm_provider": {
                "description": "Settings of airflow-llm-provider.",
                "options": {
                    "default_llm_conn_id": {
                        "description": (
                            "Connection used by LLM phases that name none. Of type pydanticai "
                            "(apache-airflow-providers-common-ai), shared with its operators."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "my_openai",
                        "default": "pydanticai_default",
                    },
                    "test_model_fallback": {
                        "description": (
                            "When the LLM connection does not exist, use pydantic-ai's offline test "
                            "model (synthetic answers, logged as a WARNING) instead of failing. Meant "
                            "for trying the example DAGs; set to False in production."
                        ),
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "False",
                        "default": "True",
                    },
                },
            },
        },
    }
