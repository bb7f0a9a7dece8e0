"""OpenLineage extractor for the Qubinode operators and the VM sensor, for deployments that register
extractors explicitly::

    [openlineage]
    extractors = airflow_llm_provider.lineage.qubinode_extractors.QubinodeExtractor

(or ``AIRFLOW__OPENLINEAGE__EXTRACTORS`` / ``OPENLINEAGE_EXTRACTORS``; several extractors are
separated by ``;``). Without it, the OpenLineage provider finds the operators'
``get_openlineage_facets_on_*`` methods itself; this class calls those very methods, so both paths
emit the same events.

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

QUBINODE_TASK_TYPES = [
    "QubinodeCreateVMOperator",
    "QubinodeDeleteVMOperator",
    "QubinodeVMActionOperator",
    "QubinodePlanOperator",
    "QubinodeKubeOperator",
    "QubinodeDeployComponentOperator",
    "QubinodeAnsiblePlaybookOperator",
    "QubinodeVMSensor",
]


class QubinodeExtractor(BaseExtractor):
    """Every Qubinode operator and ``QubinodeVMSensor``: delegates to the task's own lineage methods
    (:func:`airflow_llm_provider.lineage.qubinode.qubinode_lineage` behind them)."""

    @classmethod
    def get_operator_classnames(cls) -> list[str]:
        return list(QUBINODE_TASK_TYPES)

    def _call(self, method_name: str, *args: Any) -> OperatorLineage | None:
        method = getattr(self.operator, method_name, None)
        if method is None:  # e.g. an unrelated operator that happens to share a class name
            return None
        lineage = method(*args)
        if lineage is None:
            return None
        # Re-wrapped in this provider's OperatorLineage, as the provider's DefaultExtractor does.
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
