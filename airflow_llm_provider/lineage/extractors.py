"""OpenLineage extractors for our operators, for deployments that register extractors explicitly::

    [openlineage]
    extractors = airflow_llm_provider.lineage.extractors.CascadeExtractor;
        airflow_llm_provider.lineage.extractors.CascadePhaseExtractor

(one line in practice; or ``AIRFLOW__OPENLINEAGE__EXTRACTORS`` / ``OPENLINEAGE_EXTRACTORS``).
Without that, the provider finds the operators' ``get_openlineage_facets_on_*`` methods itself;
these classes call the very same methods, so both paths emit the same events.

This module imports the OpenLineage provider at import time: only the provider imports it.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.openlineage.extractors.base import (
    OL_METHOD_NAME_COMPLETE,
    OL_METHOD_NAME_FAIL,
    OL_METHOD_NAME_START,
    BaseExtractor,
    OperatorLineage,
)


class OperatorMethodsExtractor(BaseExtractor):
    """Delegates to the operator's own lineage methods (no second implementation)."""

    def _call(self, method_name: str, *args: Any) -> OperatorLineage | None:
        method = getattr(self.operator, method_name, None)
        if method is None:  # e.g. an unrelated operator that happens to share a class name
            return None
        lineage = method(*args)
        if lineage is None:
            return None
        # Re-wrapped like the provider's DefaultExtractor does, in case of another OperatorLineage.
        return OperatorLineage(
            inputs=lineage.inputs,
            outputs=lineage.outputs,
            run_facets=lineage.run_facets,
            job_facets=lineage.job_facets,
        )

    def _execute_extraction(self) -> OperatorLineage | None:
        return self._call(OL_METHOD_NAME_START)

    def extract_on_complete(self, task_instance: Any) -> OperatorLineage | None:
        return self._call(OL_METHOD_NAME_COMPLETE, task_instance)

    def extract_on_failure(self, task_instance: Any) -> OperatorLineage | None:
        return self._call(OL_METHOD_NAME_FAIL, task_instance)


class CascadeExtractor(OperatorMethodsExtractor):
    """A whole cascade in one task: ``CascadeOperator``, ``@task.cascade``, and the single task a
    cascade that cannot be a DAG is rendered as."""

    @classmethod
    def get_operator_classnames(cls) -> list[str]:
        return ["CascadeOperator", "_CascadeDecoratedOperator", "CascadeWholeRunOperator"]


class CascadePhaseExtractor(OperatorMethodsExtractor):
    """The tasks of a cascade rendered as a DAG: the phases (a phase, a sounding attempt, the
    soundings judge) and the plumbing steps between them (items, collect, route)."""

    @classmethod
    def get_operator_classnames(cls) -> list[str]:
        return [
            "CascadePhaseOperator",
            "CascadeSoundingOperator",
            "CascadeSoundingsJudgeOperator",
            "CascadeItemsOperator",
            "CascadeCollectOperator",
            "CascadeRouteOperator",
        ]
