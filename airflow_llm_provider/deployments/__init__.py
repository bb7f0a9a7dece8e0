"""Multi-cloud deployment specs (pure parsing, no Airflow) and, in ``factory``, their DAGs.

The spec names are loaded on first use: the hook and the operators import ``kcli_args`` from this
package at DAG-parse time, and should not pay for the spec parser (and the cascade models behind
it) to get there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_llm_provider.deployments.spec import (
        DeploymentSpec,
        DeploymentSpecError,
        Target,
        check_deployment_spec,
        load_deployment_spec,
    )

__all__ = ["DeploymentSpec", "DeploymentSpecError", "Target", "check_deployment_spec", "load_deployment_spec"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from airflow_llm_provider.deployments import spec

        return getattr(spec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
