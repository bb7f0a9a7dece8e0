"""What the page's JSON API answers, the same for both web adapters (no web framework here)."""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from airflow_llm_provider.cascades.artifact_store import (
    MAX_LIST_LIMIT,
    ArtifactStore,
    artifact_json,
    is_artifact_id,
)

INSTALL_HINT = "pip install 'airflow-llm-provider[charts]'"
LIBRARIES = {"plotly.min.js": "plotly", "vega-bundle.js": "vl_convert"}
"""The chart libraries the page loads from ``static/<name>``, and the package that ships each."""

_FILTERS = ("cascade_id", "session_id", "artifact_type")


class BadRequest(ValueError):
    """A filter or id the API refuses (answered 400 with this message)."""


def open_store() -> ArtifactStore:
    """The store the workers write (``artifact_store.default_artifacts_dir``: ``[llm_provider]
    artifacts_dir``, ``$AIRFLOW_LLM_ARTIFACTS_DIR`` or beside the phase cache)."""
    return ArtifactStore(None)


def libraries() -> dict[str, Any]:
    """Which chart libraries this server can hand the page, and what to install otherwise."""
    return {
        "plotly": importlib.util.find_spec("plotly") is not None,
        "vega": importlib.util.find_spec("vl_convert") is not None,
        "install": INSTALL_HINT,
    }


def list_payload(store: ArtifactStore, params: Mapping[str, str]) -> dict[str, Any]:
    """``GET api/artifacts``: summaries (newest first) for the filters, the filters' choices and
    the libraries available."""
    filters = {name: (params.get(name) or "").strip() or None for name in _FILTERS}
    for name, value in filters.items():
        if value is not None and len(value) > 250:
            raise BadRequest(f"{name} is too long")
    raw_limit = (params.get("limit") or "").strip() or "200"
    try:
        limit = int(raw_limit)
    except ValueError:
        raise BadRequest(f"limit must be a whole number, got {raw_limit[:20]!r}") from None
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIST_LIMIT}")
    rows = store.summaries(limit=limit, **filters)
    return {
        "artifacts": rows,
        "count": len(rows),
        "filters": {k: v for k, v in filters.items() if v},
        "choices": store.facets(),
        "libraries": libraries(),
    }


def artifact_payload(store: ArtifactStore, artifact_id: str) -> dict[str, Any] | None:
    """``GET api/artifacts/<id>``: the artifact with its content (None: unknown id)."""
    if not is_artifact_id(artifact_id):
        raise BadRequest("artifact id must look like artifact_<12 hex digits>")
    artifact = store.get(artifact_id)
    return None if artifact is None else artifact_json(artifact)


def library(name: str) -> bytes | None:
    """The JavaScript of chart library ``name`` (a key of :data:`LIBRARIES`), or None when its
    package is not installed. Both come from Python packages, so the page needs no CDN."""
    package = LIBRARIES.get(name)
    if package is None or importlib.util.find_spec(package) is None:
        return None
    return _plotly_js() if name == "plotly.min.js" else _vega_bundle()


@cache
def _plotly_js() -> bytes:
    import plotly

    # plotly ships plotly.js as package data (what plotly.io.write_html inlines).
    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()


LIBRARY_CACHE = Path("~/.cache/airflow-llm-provider/chart-libraries")
"""Where the Vega bundle is kept once built (building it takes vl-convert ~10 s of CPU)."""


@cache
def _vega_bundle() -> bytes:
    import vl_convert

    # Kept in the server user's own cache folder (never a shared temporary folder: whoever could
    # write this file would run script in the Airflow UI), one file per vl-convert version.
    version = re.sub(r"[^0-9A-Za-z.]", "_", str(getattr(vl_convert, "__version__", "unknown")))
    cached = LIBRARY_CACHE.expanduser() / f"vega-bundle-{version}.js"
    try:
        return cached.read_bytes()
    except OSError:
        pass
    # Vega, Vega-Lite and vega-embed in one self-contained script; page.js uses window.vegaEmbed.
    bundle: bytes = vl_convert.javascript_bundle().encode("utf-8")  # type: ignore[call-arg]  # stub lacks the default
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
        partial.write_bytes(bundle)
        partial.replace(cached)  # atomic: a reader never sees half a file
    except OSError:  # a read-only home: build it once per process instead
        pass
    return bundle
