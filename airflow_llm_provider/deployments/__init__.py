"""Multi-cloud deployment specs (pure parsing, no Airflow) and, in ``factory``, their DAGs."""

from __future__ import annotations

from airflow_llm_provider.deployments.spec import (
    DeploymentSpec,
    DeploymentSpecError,
    Target,
    check_deployment_spec,
    load_deployment_spec,
)

__all__ = ["DeploymentSpec", "DeploymentSpecError", "Target", "check_deployment_spec", "load_deployment_spec"]
