"""Airflow 3: the page and its JSON API as a FastAPI app the api-server mounts at ``/llm-costs``.

Airflow mounts plugin apps with ``app.mount()``; the core API's authentication dependency does
not reach them, so this app authenticates every request itself with Airflow's own ``get_user``
dependency (the UI's ``_token`` cookie, or ``Authorization: Bearer <JWT>`` from ``/auth/token``),
and asks the auth manager which DAGs the user may read before summing their costs. The app, the
page route and the login redirect come from ``plugins/_fastapi_support.py``.

Imported only when the api-server collects ``fastapi_apps`` (see ``llm_plugin.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from airflow.api_fastapi.app import get_auth_manager
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from airflow_llm_provider.plugins._fastapi_support import UserDep, create_page_app
from airflow_llm_provider.plugins.cost_page import URL_PREFIX
from airflow_llm_provider.plugins.cost_page.page import PAGE
from airflow_llm_provider.plugins.cost_page.summary import (
    DagNotPermitted,
    InvalidFilter,
    build_summary,
    parse_filters,
)


def _summary_for(user: Any, params: dict[str, Any]) -> dict[str, Any]:
    from airflow_llm_provider.costs.ledger import configured_ledger

    filters = parse_filters(params)
    auth_manager = get_auth_manager()

    def permitted(dag_ids: set[str]) -> set[str]:
        return set(auth_manager.filter_authorized_dag_ids(dag_ids=dag_ids, user=user, method="GET"))

    return build_summary(configured_ledger(), filters, permitted_dags=permitted)


def create_app() -> FastAPI:
    app = create_page_app(
        title="LLM costs",
        description="Costs of the LLM calls of every cascade, from the airflow-llm-provider cost ledger.",
        page=PAGE,
        # Everything but the API is the page: an anonymous visitor is sent to log in first.
        is_page_path=lambda path: not path.endswith("/api/summary"),
        # Looked up when called, so it is always this module's get_auth_manager.
        auth_manager=lambda: get_auth_manager(),
    )

    @app.get("/api/summary")
    async def summary(request: Request, user: UserDep) -> Any:
        try:
            # The ledger is a blocking database client: keep it off the event loop.
            data = await asyncio.to_thread(_summary_for, user, dict(request.query_params))
        except InvalidFilter as err:
            return JSONResponse({"detail": str(err)}, status_code=status.HTTP_400_BAD_REQUEST)
        except DagNotPermitted as err:
            return JSONResponse({"detail": str(err)}, status_code=status.HTTP_403_FORBIDDEN)
        except Exception as err:
            from airflow_llm_provider.costs.ledger import LedgerUnavailable

            if isinstance(err, LedgerUnavailable):
                return JSONResponse({"detail": str(err)}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
            raise
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    return app


def fastapi_app_entry() -> dict[str, Any]:
    """The ``fastapi_apps`` entry of the plugin."""
    return {"app": create_app(), "url_prefix": URL_PREFIX, "name": "LLM costs"}
