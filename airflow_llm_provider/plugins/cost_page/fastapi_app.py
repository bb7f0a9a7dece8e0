"""Airflow 3: the page and its JSON API as a FastAPI app the api-server mounts at ``/llm-costs``.

Airflow mounts plugin apps with ``app.mount()``; the core API's authentication dependency does
not reach them, so this app authenticates every request itself with Airflow's own ``get_user``
dependency (the UI's ``_token`` cookie, or ``Authorization: Bearer <JWT>`` from ``/auth/token``),
and asks the auth manager which DAGs the user may read before summing their costs.

Imported only when the api-server collects ``fastapi_apps`` (see ``llm_plugin.py``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from airflow_llm_provider.plugins.cost_page import URL_PREFIX
from airflow_llm_provider.plugins.cost_page.page import page_headers, page_html
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
    app = FastAPI(
        title="LLM costs",
        description="Costs of the LLM calls of every cascade, from the airflow-llm-provider cost ledger.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.exception_handler(HTTPException)
    async def login_first(request: Request, exc: HTTPException) -> Any:
        # An anonymous visitor of the page is sent to log in first, as the UI does; the API
        # answers 401/403 as JSON like Airflow's own API.
        page_request = not request.url.path.rstrip("/").endswith("/api/summary")
        if page_request and exc.status_code in (status.HTTP_401_UNAUTHORIZED, status.HTTP_403_FORBIDDEN):
            login = get_auth_manager().get_url_login(next_url=str(request.url))
            return RedirectResponse(login, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(user: Annotated[Any, Depends(get_user)]) -> Any:
        return HTMLResponse(page_html(), headers=page_headers())

    @app.get("/api/summary")
    async def summary(request: Request, user: Annotated[Any, Depends(get_user)]) -> Any:
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
