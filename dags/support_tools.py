"""Validators for the support-triage cascade, referenced as ``python:support_tools.<name>``.

The dags folder is on ``sys.path`` in every Airflow component, so cascades can use small helpers
kept next to the DAG files.
"""

from __future__ import annotations

import re

_PLACEHOLDER = re.compile(r"\[[A-Z_ ]+\]|\{\{|\}\}|<[a-z_]+>")


def no_placeholders(content: str) -> dict:
    """Reject replies that still contain template placeholders like [NAME] or <order_id>."""
    found = _PLACEHOLDER.findall(str(content))
    if found:
        return {"valid": False, "reason": f"placeholders left in the reply: {', '.join(sorted(set(found)))}"}
    return {"valid": True, "reason": "no placeholders"}
