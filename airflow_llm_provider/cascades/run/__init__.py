"""The cascade engine, one module per concern; :mod:`airflow_llm_provider.cascades.runner`
assembles them into :class:`~airflow_llm_provider.cascades.runner.CascadeRunner` and is the
public surface."""
