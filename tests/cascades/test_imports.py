"""The cascade package stays light: no Airflow, no LLM clients at import time."""

from __future__ import annotations

import subprocess
import sys


def test_importing_cascades_imports_no_airflow_or_llm_client():
    code = (
        "import sys, airflow_llm_provider.cascades as c; "
        "c.load_cascade({'cascade_id': 'x', 'phases': [{'name': 'a', 'instructions': '{{ input.q }}'}]}); "
        "print(sorted(m for m in ('airflow', 'pydantic_ai', 'openai') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
