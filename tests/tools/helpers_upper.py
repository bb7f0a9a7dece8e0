"""Small python: tools the tool-family tests' cascades call (``tests`` is an allowed prefix)."""

from __future__ import annotations

import time


def upper(text: str) -> str:
    if text == "boom":
        raise ValueError("boom is not a fruit")
    return text.upper()


def slow_upper(text: str) -> str:
    time.sleep(0.3)
    return text.upper()
