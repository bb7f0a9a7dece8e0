"""The page itself: one HTML document with its CSS and script inlined, the same on both lines
(built by ``plugins/_page_support.py`` from ``static/``).

It loads nothing from elsewhere (no CDN): the chart libraries come from this server
(``static/plotly.min.js``, ``static/vega-bundle.js``), relative to the page's own URL, so it works
under any ``[api] base_url`` / reverse-proxy prefix.
"""

from __future__ import annotations

from pathlib import Path

from airflow_llm_provider.plugins._page_support import StaticPage

STATIC = Path(__file__).with_name("static")

# The page runs its own inline script and the chart libraries of this server, and talks only to
# its own origin. 'unsafe-inline' is for the page's script and for the artifacts' inline scripts:
# a srcdoc frame inherits this policy (and adds the stricter one the page writes into it). The page
# never inserts fetched text as HTML, so no model-written markup reaches this document.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data: blob:; font-src data:; frame-src 'self'; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'self'"
)

# JSON and scripts are never documents: if opened directly they still get no origin to abuse.
API_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; sandbox; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
LIBRARY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=86400"}

# Referrer-Policy same-origin (also a <meta> in static/head.html): the page's URL, with its
# filters, is never sent to another origin.
PAGE = StaticPage(STATIC, CONTENT_SECURITY_POLICY, referrer_policy="same-origin")
page_html = PAGE.html
page_headers = PAGE.headers
