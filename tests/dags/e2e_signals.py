"""e2e: a cascade waits for a signal (``await_signal``: the task defers) that another DAG fires,
from a cascade (``fire_signal``) or from a plain task (``fire_signal()``, the Python helper). The
signal's name (and the wait's timeout) come from the run's conf, so each test uses its own."""

from __future__ import annotations

import pendulum
from airflow.providers.common.compat.sdk import DAG, task

from airflow_llm_provider.operators.cascade import CascadeOperator

WAITS = {
    "cascade_id": "waits_for_data",
    "inputs_schema": {"signal": "the signal to wait for", "timeout": "how long"},
    "phases": [
        {"name": "draft", "instructions": "Write one line about the data check.", "handoffs": ["wait"]},
        {
            "name": "wait",
            "instructions": "Wait for the signal {{ input.signal }} (timeout {{ input.timeout }}), "
            "then report its payload.",
            "tackle": ["await_signal"],
        },
    ],
}

FIRES = {
    "cascade_id": "fires_data_ready",
    "inputs_schema": {"signal": "the signal to fire"},
    "phases": [
        {
            "name": "fire",
            "instructions": "Fire the signal {{ input.signal }} for whoever waits for it.",
            "tackle": ["list_signals", "fire_signal"],
        }
    ],
}

DEFAULTS = {
    "start_date": pendulum.datetime(2026, 1, 1, tz="UTC"),
    "catchup": False,
    "tags": ["e2e"],
}

with DAG(dag_id="e2e_signal_wait", schedule=None, **DEFAULTS):
    CascadeOperator(
        task_id="cascade",
        cascade=WAITS,
        inputs={
            "signal": "{{ dag_run.conf['signal'] }}",
            "timeout": "{{ dag_run.conf.get('timeout', '10m') }}",
        },
        llm_conn_id="e2e_signal_llm",
    )

with DAG(dag_id="e2e_signal_fire", schedule=None, **DEFAULTS):
    CascadeOperator(
        task_id="cascade",
        cascade=FIRES,
        inputs={"signal": "{{ dag_run.conf['signal'] }}"},
        llm_conn_id="e2e_signal_llm",
    )

with DAG(dag_id="e2e_signal_fire_from_task", schedule=None, **DEFAULTS):

    @task
    def fire(**context) -> int:
        """The Python helper, as any task can call it; returns how many waiters it fired."""
        from airflow_llm_provider.operators.cascade_signals import fire_signal

        return fire_signal(context["dag_run"].conf["signal"], payload={"by": "a plain task"})

    fire()
