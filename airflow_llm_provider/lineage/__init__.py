"""OpenLineage support: SQL table lineage (``sql``) and our custom facets (``facets``).

Nothing here is imported by the package at import time, and the submodules import their heavy
dependencies (sqlglot, the OpenLineage client) inside the functions that need them.
"""

from __future__ import annotations
