"""Our custom OpenLineage facets: field by field, serialised as the client sends them, checked
against the JSON Schemas we ship, and free of prompt text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from airflow_llm_provider.cascades import load_cascade

SCHEMAS = Path(__file__).resolve().parent.parent / "airflow_llm_provider" / "lineage" / "schemas"
SECRET_PROMPT = "Summarise the confidential merger memo for ACME-7731"

CASCADE = load_cascade(
    {
        "cascade_id": "lineage_demo",
        "defaults": {"model": "openai:gpt-4o-mini"},
        "budget": {"max_cost_usd": 0.5},
        "phases": [
            {"name": "fetch", "tool": "sql:queries/fetch.sql", "inputs": {"password": "hunter2"}},
            {
                "name": "draft",
                "instructions": SECRET_PROMPT + " {{ outputs.fetch }}",
                "soundings": {"factor": 3, "evaluator_instructions": "Pick the best one"},
            },
            {
                "name": "review",
                "model": "anthropic:claude-3-5-haiku",
                "instructions": "Review {{ outputs.draft }}",
            },
        ],
    }
)
USAGE = {
    "requests": 5,
    "input_tokens": 1200,
    "output_tokens": 340,
    "cost_usd": 0.0123456789,
    "cache_hits": 1,
    "unpriced_calls": 0,
}


def serialised(facet: Any) -> dict[str, Any]:
    from openlineage.client.serde import Serde

    return json.loads(Serde.to_json(facet))


def facet_schema(name: str) -> dict[str, Any]:
    document = json.loads((SCHEMAS / f"{name}.json").read_text())
    return document["$defs"][name]["allOf"][1]  # ours; [0] is OpenLineage's base facet


def test_run_and_job_facets() -> None:
    from airflow_llm_provider.lineage.facets import CASCADE_FACET, PRODUCER, USAGE_FACET, cascade_facets

    run, job = cascade_facets(CASCADE, usage=USAGE, soundings_winners={"draft": 2}, status="success")
    assert list(run) == [USAGE_FACET] == ["airflowLlm_usage"]
    assert list(job) == [CASCADE_FACET] == ["airflowLlm_cascade"]

    usage = serialised(run[USAGE_FACET])
    assert usage == {
        "_producer": PRODUCER,
        "_schemaURL": usage["_schemaURL"],
        "models": ["openai:gpt-4o-mini", "anthropic:claude-3-5-haiku"],
        "providers": ["openai", "anthropic"],
        "requests": 5,
        "inputTokens": 1200,
        "outputTokens": 340,
        "costUsd": 0.012346,
        "unpricedCalls": 0,
        "cacheHits": 1,
        "soundingsWinners": {"draft": 2},
        "budget": {"maxCostUsd": 0.5, "exceeded": False},  # the client's serde drops None
        "status": "success",
    }
    assert usage["_schemaURL"].endswith("/schemas/LlmUsageRunFacet.json#/$defs/LlmUsageRunFacet")
    jsonschema.validate(usage, facet_schema("LlmUsageRunFacet"))

    cascade = serialised(job[CASCADE_FACET])
    assert cascade["_producer"] == PRODUCER
    assert cascade["_schemaURL"].endswith("/schemas/LlmCascadeJobFacet.json#/$defs/LlmCascadeJobFacet")
    assert cascade["cascadeId"] == "lineage_demo"
    assert cascade["contentHash"].startswith("sha256:")
    fetch, draft, review = cascade["phases"]
    assert fetch == {
        "name": "fetch",
        "kind": "tool",
        "dependsOn": [],
        "handoffs": [],
        "tool": "sql:queries/fetch.sql",
    }
    assert draft["kind"] == "llm"
    assert draft["model"] == "openai:gpt-4o-mini"
    assert draft["dependsOn"] == ["fetch"]
    assert draft["soundings"] == {"factor": 3, "mode": "evaluate"}
    assert draft["instructionsHash"].startswith("sha256:") and len(draft["instructionsHash"]) == 71
    assert review["dependsOn"] == ["draft"]
    assert review["model"] == "anthropic:claude-3-5-haiku"
    jsonschema.validate(cascade, facet_schema("LlmCascadeJobFacet"))


def test_no_prompt_or_secret_in_facets() -> None:
    from airflow_llm_provider.lineage.facets import cascade_facets

    run, job = cascade_facets(CASCADE, usage=USAGE)
    text = json.dumps([serialised(f) for f in [*run.values(), *job.values()]])
    for forbidden in ("confidential", "ACME-7731", "Pick the best", "Review", "hunter2", "password"):
        assert forbidden not in text


def test_content_hash_follows_the_cascade() -> None:
    from airflow_llm_provider.lineage.facets import cascade_hash

    same = load_cascade(CASCADE.model_dump(mode="json", by_alias=True, exclude_defaults=True))
    changed = CASCADE.model_copy(update={"description": "edited"})
    assert cascade_hash(same) == cascade_hash(CASCADE)
    assert cascade_hash(changed) != cascade_hash(CASCADE)


def test_start_has_only_the_job_facet_and_budget_exceeded_is_reported() -> None:
    from airflow_llm_provider.lineage.facets import cascade_facets, usage_run_facet

    run, job = cascade_facets(CASCADE)
    assert run == {} and list(job) == ["airflowLlm_cascade"]
    facet = usage_run_facet({}, models=["gpt-4o"], budget_exceeded=True, status="failed")
    assert facet.budget == {"maxTokens": None, "maxCostUsd": None, "exceeded": True}
    assert facet.providers == [] and facet.requests == 0


def test_phase_task_models_limited_to_its_phase() -> None:
    from airflow_llm_provider.lineage.facets import cascade_facets

    run, _ = cascade_facets(CASCADE, usage=USAGE, phases=["review"])
    assert run["airflowLlm_usage"].models == ["anthropic:claude-3-5-haiku"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["LlmUsageRunFacet", "LlmCascadeJobFacet"])
def test_shipped_schemas_are_valid(name: str) -> None:
    document = json.loads((SCHEMAS / f"{name}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(document)


def test_lineage_package_import_is_cheap() -> None:
    code = (
        "import sys, airflow_llm_provider.lineage, airflow_llm_provider.lineage.sql; "
        "print(','.join(m for m in ('openlineage', 'sqlglot', 'attrs') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
