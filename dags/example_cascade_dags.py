"""Every cascade file in `cascades/` with an `airflow:` block becomes a DAG of its own, one task per
phase (see docs/cascades.md, "Cascades as DAGs"). Broken files show up as import errors of this
file, naming file, line and field."""

from airflow_llm_provider.cascade_dags import load_cascade_dags

load_cascade_dags("cascades/", globals())
