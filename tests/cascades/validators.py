"""Validators used by the runner tests through ``python:tests.cascades.validators.<name>``."""

from __future__ import annotations


def long_enough(content: str) -> dict:
    return {"valid": len(content) > 10, "reason": "too short"}


def clean(content: str) -> dict:
    return {"valid": False, "reason": "profanity"}
