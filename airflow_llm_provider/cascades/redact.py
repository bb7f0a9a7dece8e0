"""Secret scrubbing for text the engine hands out: errors in results, progress lines, alerts.

An upstream error can quote the credential it was sent (a gateway answering 401 with the request's
``Authorization`` header in its body, a proxy echoing the URL with ``?api_key=...``). Whatever text
the engine turns into part of a result passes through :func:`redact` first, so such a body never
reaches XCom, ``airflow-llm run``'s output, lineage or Slack.

The engine does not know the secrets: the layer that reads them (``hooks/llm.py`` for the LLM
connection) registers them with :func:`register_secret`. The registry is per process, like
Airflow's own secrets masker, and only ever grows: a secret seen once stays masked for the life of
the worker. Pure: no Airflow import (under Airflow, the hook also feeds Airflow's masker, which
covers the task log).
"""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_SECRET_LENGTH = 5
"""Shorter values are not registered: masking ``"test"`` or ``"1234"`` would shred ordinary text
and hide nothing worth hiding (Airflow's masker has the same floor by default)."""

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secret(value: Any) -> None:
    """Mask ``value`` (and its common encodings) in everything :func:`redact` sees from now on.

    ``None``, empty and short values are ignored; non-text values are registered as their text.
    """
    global _pattern
    if value is None:
        return
    text = value if isinstance(value, str) else str(value)
    if len(text.strip()) < MIN_SECRET_LENGTH:
        return
    variants = {v for v in _encodings(text) if len(v) >= MIN_SECRET_LENGTH}
    with _lock:
        if variants <= _secrets:
            return
        _secrets.update(variants)
        # Longest first: a secret that contains another must be replaced whole, not in pieces.
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(v) for v in ordered))


def register_secrets(values: Iterable[Any]) -> None:
    for value in values:
        register_secret(value)


def redact(text: str) -> str:
    """``text`` with every registered secret, in any of its encodings, replaced by ``***``."""
    pattern = _pattern  # read once: a concurrent registration swaps in a new, complete pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def redact_value(value: Any) -> Any:
    """:func:`redact` applied to every string inside ``value`` (dicts, lists and tuples rebuilt,
    anything else returned as is)."""
    if _pattern is None:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact_value(k): redact_value(v) for k, v in value.items()}
    if type(value) in (list, tuple):  # exact types: a named tuple is not rebuilt from a generator
        return type(value)(redact_value(v) for v in value)
    return value


def _encodings(secret: str) -> set[str]:
    """The forms a secret takes in the error texts we see: raw, JSON-escaped (an error body quoting
    it), URL-encoded (a query string or form), HTML-escaped (a gateway's error page) and Python's
    repr escaping (an exception's ``args`` printed with ``!r``)."""
    return {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        html.escape(secret, quote=True),
        html.escape(secret, quote=False),
        repr(secret)[1:-1],
    }
