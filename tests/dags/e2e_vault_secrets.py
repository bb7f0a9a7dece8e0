"""e2e: a task reads a connection and a variable kept in Vault, and a cascade calls its LLM through
a ``pydanticai`` connection kept in Vault. Both tasks print the secrets on purpose: the task log
must show them masked."""

from __future__ import annotations

import pendulum
from airflow.providers.common.compat.sdk import DAG, BaseHook, Variable, task

from airflow_llm_provider.operators.cascade import CascadeOperator

CASCADE = {
    "cascade_id": "vault_greeting",
    "phases": [{"name": "greet", "instructions": "Greet {{ input.team }} in one sentence."}],
}

with DAG(
    dag_id="e2e_vault_secrets",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["e2e"],
):

    @task
    def read_secrets() -> dict:
        conn = BaseHook.get_connection("vault_e2e_db")
        token = Variable.get("vault_e2e_token")
        print(f"connection password is {conn.password}; variable is {token}")
        return {"host": conn.host, "login": conn.login, "port": conn.port, "token_length": len(token)}

    @task
    def echo_llm_connection() -> str:
        conn = BaseHook.get_connection("vault_e2e_llm")
        print(f"llm api key is {conn.password}")
        return conn.host

    greet = CascadeOperator(
        task_id="greet",
        cascade=CASCADE,
        inputs={"team": "platform"},
        llm_conn_id="vault_e2e_llm",
        cache=None,
    )
    read_secrets() >> echo_llm_connection() >> greet
