"""Secrets from Vault under a real scheduler: the deployment's [secrets] backend is our
VaultBackend (AppRole, read-only policy; see the airflow_server fixture). A connection, a variable
and the LLM's ``pydanticai`` connection live only in Vault; none of their values may reach a log."""

from __future__ import annotations

import secrets

import pytest

from airflow_llm_provider.testing.openai_server import text

pytestmark = pytest.mark.e2e

DAG_ID = "e2e_vault_secrets"


def test_dag_reads_connection_variable_and_llm_key_from_vault(airflow_server, llm_server):
    db_password = f"pg-{secrets.token_hex(8)}"
    token = f"tok-{secrets.token_hex(8)}"
    api_key = f"sk-vault-{secrets.token_hex(8)}"
    airflow_server.put_vault_secret(
        "connection", "vault_e2e_db", conn_uri=f"postgresql://app:{db_password}@db.internal:5432/sales"
    )
    airflow_server.put_vault_secret("variable", "vault_e2e_token", value=token)
    airflow_server.put_vault_secret("connection", "vault_e2e_llm", **llm_server.connection(api_key=api_key))
    llm_server.script(text("Hello, platform team!"))
    audit_before = len(airflow_server.vault.audit_entries())

    airflow_server.wait_for_dag(DAG_ID)
    airflow_server.unpause(DAG_ID)
    run_id = airflow_server.trigger(DAG_ID)
    run = airflow_server.wait_for_run(DAG_ID, run_id, timeout=300)
    assert run["state"] == "success", airflow_server.log_tail("scheduler")

    assert airflow_server.xcom(DAG_ID, run_id, "read_secrets") == {
        "host": "db.internal",
        "login": "app",
        "port": 5432,
        "token_length": len(token),
    }
    assert airflow_server.xcom(DAG_ID, run_id, "echo_llm_connection") == llm_server.base_url
    greeting = airflow_server.xcom(DAG_ID, run_id, "greet")
    assert greeting["final"] == "Hello, platform team!"
    # The LLM was called with the key that only Vault holds.
    assert len(llm_server.requests) == 1
    assert llm_server.requests[0].headers["authorization"] == f"Bearer {api_key}"

    # The values were really read from Vault (audit log), by the workers' AppRole login.
    reads = [
        e["request"]["path"]
        for e in airflow_server.vault.audit_entries()[audit_before:]
        if e["type"] == "request" and e["request"].get("operation") == "read"
    ]
    for key in ("connections/vault_e2e_db", "variables/vault_e2e_token", "connections/vault_e2e_llm"):
        assert f"secret/data/e2e/{key}" in reads

    logs = {
        task_id: airflow_server.task_log(DAG_ID, run_id, task_id)
        for task_id in ("read_secrets", "echo_llm_connection", "greet")
    }
    assert "connection password is ***; variable is ***" in logs["read_secrets"]
    assert "llm api key is ***" in logs["echo_llm_connection"]
    for task_id, log in logs.items():
        for secret in (db_password, token, api_key):
            assert secret not in log, f"{task_id}'s log leaks a secret"
    # Nor any task log of any run so far (every file under the deployment's base_log_folder).
    # Not asserted: the components' own stdout. Airflow 3.3's LocalExecutor supervisor echoes a
    # task's print() output to the scheduler's console without masking (task logs are masked);
    # docs/vault.md says so.
    files = [p for p in (airflow_server.home / "logs").rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in files)
    for path in files:
        content = path.read_text(errors="replace")
        for secret in (db_password, token, api_key):
            assert secret not in content, f"{path} leaks a secret"
