"""The migration report: what a folder of Windlass cascades needs before it runs here.

Per file: ``ok``, ``warning`` (runs; something is ignored or suspicious), ``refused`` (only
features we refuse by name: not supported yet, or impossible on Airflow) or ``invalid`` (an
error in the file itself). Then the features that block files, most blocking first.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from airflow_llm_provider.cascades.errors import ValidationIssue

Status = Literal["ok", "warning", "refused", "invalid"]

_BUILTIN_TOOL = re.compile(
    r"^Windlass built-in tool '([^']+)' (is not available|cannot run|\(Windlass human-in-the-loop\))"
)
_REFUSAL_MARKERS = (
    "is not supported by airflow-llm-provider yet",
    "is not supported yet",
    "cannot run on Airflow",
)
_INDEX = re.compile(r"\[[^\]]*\]")


@dataclass
class FileReport:
    file: str
    status: Status
    issues: list[ValidationIssue] = field(default_factory=list)
    warnings: list[ValidationIssue] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    """The refused features that block this file (empty unless ``refused``)."""

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "status": self.status,
            "blocked_by": self.features,
            "issues": [str(issue) for issue in self.issues],
            "warnings": [str(warning) for warning in self.warnings],
        }


def refused_feature(issue: ValidationIssue) -> str | None:
    """The feature an issue refuses by name (e.g. ``phase.soundings.reforge``, ``tool set_state``),
    or None when the issue is an error in the file."""
    tool = _BUILTIN_TOOL.match(issue.message)
    if tool is not None:
        return f"tool {tool.group(1)}"
    if not any(marker in issue.message for marker in _REFUSAL_MARKERS):
        return None
    where = _INDEX.sub("", issue.field)
    where = where.replace("phases.", "phase.", 1) if where.startswith("phases") else where
    if "validators" in issue.field or "loop_until" in issue.field:
        language = re.search(r"inline `(\w+)` validators", issue.message)
        if language:
            return f"inline {language.group(1)} validator"
    return where


def file_report(
    file: str, issues: Iterable[ValidationIssue], warnings: Iterable[ValidationIssue]
) -> FileReport:
    issues, warnings = list(issues), list(warnings)
    features = [refused_feature(issue) for issue in issues]
    if not issues:
        status: Status = "warning" if warnings else "ok"
    elif all(features):
        status = "refused"
    else:
        status = "invalid"
    blocking = list(dict.fromkeys(f for f in features if f)) if status == "refused" else []
    return FileReport(file, status, issues, warnings, blocking)


@dataclass
class MigrationReport:
    files: list[FileReport]

    def counts(self) -> dict[str, int]:
        counted = Counter(report.status for report in self.files)
        return {status: counted.get(status, 0) for status in ("ok", "warning", "refused", "invalid")}

    def blocking_features(self) -> list[tuple[str, int, int]]:
        """``(feature, files blocked, files where it is the only blocker)``, most blocking first."""
        blocked: Counter[str] = Counter()
        only: Counter[str] = Counter()
        for report in self.files:
            blocked.update(report.features)
            if len(report.features) == 1:
                only.update(report.features)
        return sorted(
            ((f, n, only[f]) for f, n in blocked.items()), key=lambda row: (-row[1], -row[2], row[0])
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "summary": {"files": len(self.files), **self.counts()},
            "blocking_features": [
                {"feature": feature, "files": files, "only_blocker": only}
                for feature, files, only in self.blocking_features()
            ],
            "files": [report.to_dict() for report in self.files],
        }

    def to_text(self) -> str:
        lines = []
        width = max((len(report.file) for report in self.files), default=10)
        for report in self.files:
            detail = ""
            if report.status == "refused":
                detail = "blocked by " + ", ".join(report.features)
            elif report.status == "invalid":
                detail = next(str(i) for i in report.issues if refused_feature(i) is None).split(": ", 1)[-1]
            elif report.status == "warning":
                detail = f"{len(report.warnings)} warning(s)"
            lines.append(f"{report.file:<{width}}  {report.status:<8}  {detail}".rstrip())
        counts = self.counts()
        total = len(self.files)
        lines.append("")
        lines.append(
            f"{total} files: {counts['ok']} ok, {counts['warning']} ok with warnings, "
            f"{counts['refused']} refused, {counts['invalid']} invalid "
            f"({(counts['ok'] + counts['warning']) / total:.0%} accepted)"
            if total
            else "0 files"
        )
        features = self.blocking_features()
        if features:
            lines.append("")
            lines.append(f"{'feature':<48} {'files':>6} {'only':>6}")
            lines.extend(f"{feature:<48} {files:>6} {only:>6}" for feature, files, only in features)
        return "\n".join(lines)
