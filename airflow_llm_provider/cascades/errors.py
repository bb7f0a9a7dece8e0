"""Validation issues that name a file, a line and a field, so authors can fix cascades quickly."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

FieldPath = tuple[str | int, ...]
"""Where a value sits in a cascade document: ``("phases", 2, "handoffs", 0)``."""


@dataclass(frozen=True)
class ValidationIssue:
    """One problem in a cascade file; ``line`` is 1-based, ``None`` when no line is known."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.field}: {self.message}"


class CascadeValidationError(ValueError):
    """Every issue of a cascade at once, one per line, so a single run shows all that is wrong."""

    def __init__(self, issues: Iterable[ValidationIssue]) -> None:
        self.issues: list[ValidationIssue] = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))
