"""What the plugin's pages share, free of any web framework: each page is one self-contained HTML
document built from a static folder, served with security headers around its own CSP.

A page's folder holds ``head.html`` (its ``<title>`` and any page-specific ``<meta>``),
``body.html``, ``page.css`` and ``page.js``. They are inlined into the common shell
(``static/shell.html``) after the common stylesheet (``static/base.css``), so the document loads
nothing from elsewhere (no CDN: Airflow often runs without internet access).

The web adapters are in ``_fastapi_support`` (Airflow 3) and ``_flask_support`` (Airflow 2); this
module imports neither framework.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SHARED_STATIC = Path(__file__).with_name("static")

_SLOT = re.compile(r"<!--__(HEAD|BODY)__-->|/\*__(CSS|JS)__\*/")


@cache
def inline_page(static: Path) -> str:
    """The shell with the page of ``static`` filled in (each slot once: inlined text is not
    searched again for slots)."""

    def read(folder: Path, name: str) -> str:
        return (folder / name).read_text(encoding="utf-8")

    parts = {
        "HEAD": read(static, "head.html").removesuffix("\n"),
        "BODY": read(static, "body.html").removesuffix("\n"),
        "CSS": read(SHARED_STATIC, "base.css") + read(static, "page.css"),
        "JS": read(static, "page.js"),
    }
    return _SLOT.sub(lambda slot: parts[slot.group(1) or slot.group(2)], read(SHARED_STATIC, "shell.html"))


def security_headers(content_security_policy: str, referrer_policy: str | None = None) -> dict[str, str]:
    """The headers of a page document: its CSP, no MIME sniffing, never cached."""
    headers = {"Content-Security-Policy": content_security_policy, "X-Content-Type-Options": "nosniff"}
    if referrer_policy is not None:
        headers["Referrer-Policy"] = referrer_policy
    headers["Cache-Control"] = "no-store"
    return headers


@dataclass(frozen=True)
class StaticPage:
    """One page: its static folder and the policy it is served with."""

    static: Path
    content_security_policy: str
    referrer_policy: str | None = None

    def html(self) -> str:
        return inline_page(self.static)

    def headers(self) -> dict[str, str]:
        return security_headers(self.content_security_policy, self.referrer_policy)
