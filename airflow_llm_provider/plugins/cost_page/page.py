"""The page itself: one self-contained HTML document (CSS and JS inlined), the same on both lines
(built by ``plugins/_page_support.py`` from ``static/``).

It loads nothing from elsewhere (no CDN: Airflow often runs without internet access) and finds
its API relative to its own URL, so it works under any ``[api] base_url`` / reverse-proxy prefix.
"""

from __future__ import annotations

from pathlib import Path

from airflow_llm_provider.plugins._page_support import StaticPage

STATIC = Path(__file__).with_name("static")

# The page runs only its own inline script and talks only to its own origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; frame-ancestors 'self'; base-uri 'none'; form-action 'self'"
)

PAGE = StaticPage(STATIC, CONTENT_SECURITY_POLICY)
page_html = PAGE.html
page_headers = PAGE.headers
