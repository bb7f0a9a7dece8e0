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

from airflow_llm_provider.lineage.extractors import OperatorMethodsExtractor

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


class QubinodeExtractor(OperatorMethodsExtractor):
    """Every Qubinode operator and ``QubinodeVMSensor``: delegates to the task's own lineage methods
    (:func:`airflow_llm_provider.lineage.qubinode.qubinode_lineage` behind them)."""

    @classmethod
    def get_operator_classnames(cls) -> list[str]:
        return list(QUBINODE_TASK_TYPES)
