"""Multi-cloud fan-out: one spec (deployments/web-tier.yaml), one mapped task per VM and target.

Two DAGs come out of the spec: ``deploy_web_tier`` (create every VM on the Qubinode host and on
AWS/GCP/Azure through kcli's ``-C`` clients, then wait for their IPs in the triggerer) and
``destroy_web_tier``. Trigger with conf ``{"targets": ["lab"]}`` to touch only some targets.
``max_active_runs=1`` keeps two runs from building the same VMs; pass ``pool="qubinode_deploy"``
(a pool you create with one slot) to also serialise deploys and destroys on the host.

Needs a ``qubinode`` connection ``qubinode_default`` when it runs; parsing contacts nothing.
"""

from __future__ import annotations

from pathlib import Path

from airflow_llm_provider.deployments.factory import deployment_dags

globals().update(
    deployment_dags(
        Path(__file__).parent / "deployments" / "web-tier.yaml",
        tags=["example", "qubinode", "multicloud"],
        doc_md=__doc__,
    )
)
