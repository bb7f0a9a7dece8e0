"""The provider as Airflow sees it: registry schema, CLI discovery, plugin, and import cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_llm_provider.get_provider_info import get_provider_info

HEAVY_MODULES = ("pydantic_ai", "openai", "hvac", "sqlparse", "paramiko", "openlineage")


def test_provider_info_matches_airflow_schema():
    import airflow
    import jsonschema

    schema_path = Path(airflow.__file__).parent / "provider_info.schema.json"
    jsonschema.validate(get_provider_info(), json.loads(schema_path.read_text()))


def test_every_declared_module_and_class_imports():
    import importlib

    info = get_provider_info()
    for kind in ("hooks", "operators", "sensors", "triggers"):
        for entry in info.get(kind, []):
            for module in entry["python-modules"]:
                importlib.import_module(module)
    for entry in info.get("connection-types", []):
        module, _, name = entry["hook-class-name"].rpartition(".")
        hook = getattr(importlib.import_module(module), name)
        assert hook.conn_type == entry["connection-type"]
    for entry in info.get("plugins", []):
        module, _, name = entry["plugin-class"].rpartition(".")
        assert getattr(importlib.import_module(module), name).name == entry["name"]
    integrations = {i["integration-name"] for i in info["integrations"]}
    for kind in ("hooks", "operators", "sensors", "triggers"):
        assert {e["integration-name"] for e in info.get(kind, [])} <= integrations


def _airflow_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_airflow_cli_discovers_the_provider_and_its_connection_types():
    result = _airflow_cli("providers", "get", "airflow-llm-provider", "--full", "-o", "json")
    assert result.returncode == 0, result.stderr
    (provider,) = json.loads(result.stdout)
    assert provider["package-name"] == "airflow-llm-provider"
    declared = [c["connection-type"] for c in get_provider_info().get("connection-types", [])]
    assert [c["connection-type"] for c in provider.get("connection-types", [])] == declared

    hooks = _airflow_cli("providers", "hooks", "-o", "json")
    assert hooks.returncode == 0, hooks.stderr
    registered = {row["connection_type"]: row for row in json.loads(hooks.stdout)}
    for conn_type in declared:
        assert registered[conn_type]["package_name"] == "airflow-llm-provider"


def test_connection_form_fields_reach_airflow():
    """The UI's connection form for each of our types: field behaviour and every custom field."""
    behaviours = _airflow_cli("providers", "behaviours", "-o", "json")
    assert behaviours.returncode == 0, behaviours.stderr
    widgets = _airflow_cli("providers", "widgets", "-o", "json")
    assert widgets.returncode == 0, widgets.stderr
    with_behaviour = {row["field_behaviours"] for row in json.loads(behaviours.stdout)}
    widget_names = {row["connection_parameter_name"] for row in json.loads(widgets.stdout)}
    for entry in get_provider_info()["connection-types"]:
        conn_type = entry["connection-type"]
        assert conn_type in with_behaviour
        for field in entry["conn-fields"]:
            assert f"extra__{conn_type}__{field}" in widget_names


def test_airflow_cli_lists_the_plugin():
    result = _airflow_cli("plugins", "-o", "json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert "llm_provider" in plugins
    assert "airflow_llm_provider" in json.dumps(plugins["llm_provider"])


def test_provider_config_defaults_reach_airflow_config():
    result = _airflow_cli("config", "get-value", "llm_provider", "default_llm_conn_id")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pydanticai_default"


@pytest.mark.parametrize(
    "module",
    [
        "airflow_llm_provider",
        "airflow_llm_provider.hooks.llm",
        "airflow_llm_provider.plugins.llm_plugin",
        "airflow_llm_provider.get_provider_info",
        "airflow_llm_provider.secrets.vault",
        "airflow_llm_provider.operators.cascade",
        "airflow_llm_provider.decorators.cascade",
    ],
)
def test_parse_time_imports_stay_cheap(module):
    """What DAG parsing imports must not drag in the LLM, Vault or SQL libraries."""
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing {module} pulled in {result.stdout.strip()}"


def test_importtime_report_of_the_package_has_no_heavy_module():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import airflow_llm_provider"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line
    }
    assert not imported & set(HEAVY_MODULES)
    assert "airflow_llm_provider" in imported
