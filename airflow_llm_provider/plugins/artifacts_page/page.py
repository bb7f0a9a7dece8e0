"""The page itself: one HTML document with its CSS and script inlined, the same on both lines.

It loads nothing from elsewhere (no CDN): the chart libraries come from this server
(``static/plotly.min.js``, ``static/vega-bundle.js``), relative to the page's own URL, so it works
under any ``[api] base_url`` / reverse-proxy prefix.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

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


@cache
def page_html() -> str:
    html = (STATIC / "page.html").read_text(encoding="utf-8")
    css = (STATIC / "page.css").read_text(encoding="utf-8")
    js = (STATIC / "page.js").read_text(encoding="utf-8")
    return html.replace("/*__CSS__*/", css).replace("/*__JS__*/", js)


def page_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }
