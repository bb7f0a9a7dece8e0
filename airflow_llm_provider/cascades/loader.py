"""Load a cascade file (YAML or JSON) into a ``Cascade``, reporting every problem with its line.

Pipeline: read -> compose the YAML node tree (JSON too: it is YAML for our purposes) to map field
paths to lines -> refuse unsupported Windlass keys and unknown keys (with a suggestion) -> pydantic
-> semantic checks (``validate.py``). All issues of a file are collected before raising.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import os
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from airflow_llm_provider.cascades.errors import CascadeValidationError, ValidationIssue
from airflow_llm_provider.cascades.limits import Limits, configured_limits
from airflow_llm_provider.cascades.parsing import (
    YAML_SUFFIXES,
    Collector,
    FieldPath,
    parse_document,
)
from airflow_llm_provider.cascades.refused import REFUSED, WARNED, WINDLASS_MODELS
from airflow_llm_provider.cascades.spec import Cascade, Phase

log = logging.getLogger(__name__)

CASCADE_SUFFIXES = (*YAML_SUFFIXES, ".json")


@dataclass
class CheckResult:
    """What checking one cascade found: the model (if valid), errors and warnings."""

    file: str
    cascade: Cascade | None = None
    issues: list[ValidationIssue] = field(default_factory=list)
    warnings: list[ValidationIssue] = field(default_factory=list)


def load_cascade(
    source: str | Path | Mapping[str, Any],
    *,
    tools: Collection[str] | None = None,
    tool_path: Sequence[str | Path] = (),
) -> Cascade:
    """
    Parse and strictly validate a cascade from a file path or an in-memory mapping.

    :param tools: names of the tools the run will register (default: the standard ones)
    :param tool_path: more folders to find tool and validator cascades in (see ``references.py``)
    :raises CascadeValidationError: listing every problem found, each with file, line and field
    """
    return _checked(check_cascade(source, tools=tools, tool_path=tool_path))


def _checked(result: CheckResult) -> Cascade:
    for warning in result.warnings:
        log.warning("%s", warning)
    if result.cascade is None:
        raise CascadeValidationError(result.issues)
    return result.cascade


def _validation_cache_dir() -> Path | None:
    if os.environ.get("AIRFLOW_LLM_VALIDATION_CACHE", "").lower() in ("0", "false", "off"):
        return None
    root = os.environ.get("AIRFLOW_LLM_CACHE_DIR") or str(Path.home() / ".cache" / "airflow-llm-provider")
    return Path(root) / "validated"


@functools.cache
def _validator_fingerprint() -> bytes:
    """Changes whenever the code that validates cascades changes (not only the version)."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for name in (
        "loader.py",
        "parsing.py",
        "validate.py",
        "spec.py",
        "refused.py",
        "templates.py",
        "graph.py",
        "limits.py",
    ):
        # references.py is not here: its checks read other files and run on every load
        digest.update((package / name).read_bytes())
    return digest.digest()


def check_cascade(
    source: str | Path | Mapping[str, Any],
    *,
    tools: Collection[str] | None = None,
    tool_path: Sequence[str | Path] = (),
) -> CheckResult:
    """Like ``load_cascade`` but returns issues and warnings instead of raising.

    A file that validated before, unchanged, under the same validator code, is not validated again:
    DAG folders are parsed every few seconds, like Python modules, whose compiled form Python caches
    the same way. Only valid files are cached (with their warnings), so errors are always fresh.
    What the file refers to (tools, validators, child cascades, files) is checked every time.
    """
    limits = configured_limits()  # read once per check: DAG folders hold many files
    if isinstance(source, Mapping):
        return _check_data(dict(source), Collector("<dict>"), limits)
    path = Path(source)
    result = _check_file_cached(path, limits)
    if result.cascade is None:
        return result
    from airflow_llm_provider.cascades.references import reference_issues
    from airflow_llm_provider.cascades.tools import STANDARD_TOOLS

    found = reference_issues(result.cascade, path, STANDARD_TOOLS if tools is None else tools, tool_path)
    if not found:
        return result
    collector = Collector(str(path))
    with contextlib.suppress(Exception):  # only for line numbers: the file parsed a moment ago
        parse_document(path.read_text(encoding="utf-8"), path.suffix.lower(), collector, limits.load)
    for field_path, message in found:
        collector.issue(field_path, message)
    return CheckResult(str(path), None, collector.issues, result.warnings)


def read_document(path: Path) -> Any:
    """The data in a YAML/JSON file, or None when it cannot be read or parsed (no line numbers)."""
    collector = Collector(str(path))
    try:
        return parse_document(path.read_text(encoding="utf-8"), path.suffix.lower(), collector)
    except (OSError, UnicodeDecodeError, RecursionError):
        return None


def _check_file_cached(path: Path, limits: Limits) -> CheckResult:
    try:
        content = path.read_bytes()
    except OSError as exc:
        collector = Collector(str(path))
        collector.issue((), f"cannot read file: {exc}")
        return _result(collector, None)
    entry = _cache_entry(path, content, limits)
    if entry is not None:
        try:
            cached = json.loads(entry.read_bytes())
            return CheckResult(
                file=str(path),
                cascade=Cascade.model_validate_json(cached["cascade"]),
                warnings=[ValidationIssue(**warning) for warning in cached["warnings"]],
            )
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not cached yet, or an unreadable entry: validate
    result = _check_file(path, content, limits)
    if entry is not None and result.cascade is not None:
        _store(entry, result)
    return result


def _cache_entry(path: Path, content: bytes, limits: Limits) -> Path | None:
    cache_dir = _validation_cache_dir()
    if cache_dir is None:
        return None
    # The configured limits decide validity too (a lowered max_soundings must re-check the file).
    settings = repr(limits).encode()
    key = hashlib.sha256(_validator_fingerprint() + settings + str(path.resolve()).encode() + b"\0" + content)
    return cache_dir / f"{key.hexdigest()}.json"


def _store(entry: Path, result: CheckResult) -> None:
    assert result.cascade is not None
    payload = {
        "cascade": result.cascade.model_dump_json(by_alias=True),  # JSON keeps dates as dates
        "warnings": [dataclasses.asdict(warning) for warning in result.warnings],
    }
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        partial = entry.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(payload))
        partial.replace(entry)
    except OSError:
        pass  # a read-only home only costs speed


def _check_file(path: Path, content: bytes, limits: Limits) -> CheckResult:
    collector = Collector(str(path))
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        collector.issue((), f"cannot read file: {exc}")
        return _result(collector, None)
    try:
        data = parse_document(text, path.suffix.lower(), collector, limits.load)
    except RecursionError:
        collector.issue((), "the document nests too deeply")
    if collector.issues:
        return _result(collector, None)
    return _check_data(data, collector, limits)


def _result(collector: Collector, cascade: Cascade | None) -> CheckResult:
    return CheckResult(collector.file, cascade, collector.issues, collector.warnings)


# -- structure ----------------------------------------------------------------------------------


def _check_data(data: Any, collector: Collector, limits: Limits) -> CheckResult:
    from pydantic import ValidationError

    from airflow_llm_provider.cascades.validate import semantic_issues, semantic_warnings

    if not isinstance(data, dict):
        kind = "an empty document" if data is None else f"a {type(data).__name__}"
        collector.issue((), f"a cascade must be a mapping with `cascade_id` and `phases`, got {kind}")
        return _result(collector, None)
    phases, most = data.get("phases"), limits.load.max_cascade_phases
    if isinstance(phases, list) and len(phases) > most:
        collector.issue(
            ("phases",),
            f"{len(phases):,} phases, over the limit of {most:,} ([llm_provider] max_cascade_phases)",
        )
        return _result(collector, None)
    cleaned = _prepass(data, Cascade, (), collector)
    try:
        cascade = Cascade.model_validate(cleaned)
    except RecursionError:
        collector.issue((), "the document nests too deeply")
        return _result(collector, None)
    except ValidationError as exc:
        _report_pydantic(exc, cleaned, collector)
        return _result(collector, None)
    for path, message in semantic_issues(cascade, limits):
        collector.issue(path, message)
    if collector.issues:
        return _result(collector, None)
    for path, message in semantic_warnings(cascade):
        collector.warn(path, message)
    return _result(collector, cascade)


def _allowed_keys(model: type[BaseModel]) -> dict[str, str]:
    """Key accepted in the file -> attribute name."""
    return {(info.alias or name): name for name, info in model.model_fields.items()}


def _nested_model(annotation: Any, value: Any = None) -> tuple[str, type[BaseModel]] | None:
    """How a field nests a model: ``("one"|"list"|"dict", Model)``, or None. In a union, the
    member that fits the value's shape (a list, a mapping) wins."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "one", annotation
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _nested_model(args[0], value)
    if origin in (typing.Union, types.UnionType):
        members = [found for arg in args if (found := _nested_model(arg)) is not None]
        shapes = ("list",) if isinstance(value, list) else ("one", "dict")
        fitting = [found for found in members if found[0] in shapes]
        return next(iter(fitting or members), None)
    if origin is list and args and (found := _nested_model(args[0])) and found[0] == "one":
        return "list", found[1]
    if origin is dict and len(args) == 2 and (found := _nested_model(args[1])) and found[0] == "one":
        return "dict", found[1]
    return None


def _item_model(model: type[BaseModel], attribute: str, item: dict[Any, Any]) -> type[BaseModel] | None:
    """For a list of a union of models told apart by ``type`` (Windlass triggers): the member the
    item's ``type`` names."""
    annotation = model.model_fields[attribute].annotation
    if typing.get_origin(annotation) is not list:
        return None
    members = list(typing.get_args(_unannotated(typing.get_args(annotation)[0])))
    members = [_unannotated(member) for member in members]
    for member in members:
        if not (isinstance(member, type) and issubclass(member, BaseModel)):
            continue
        field = member.model_fields.get("type")
        if field is not None and item.get("type", field.default) in typing.get_args(field.annotation):
            return member
    return None


def _unannotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _typo_of(key: str, allowed: Mapping[str, str]) -> str | None:
    """The allowed key ``key`` is most likely a misspelling of: same letters up to case and
    ``-``/``_``, or one edit away (two for keys of 9+ letters)."""
    normal = key.lower().replace("-", "_")
    best: tuple[int, str] | None = None
    for candidate in allowed:
        if candidate.lower() == normal:
            return candidate
        distance = _edit_distance(normal, candidate.lower())
        if distance <= (1 if len(candidate) < 9 else 2) and (best is None or distance < best[0]):
            best = (distance, candidate)
    return best[1] if best else None


def _edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (optimal string alignment): a swap of neighbours is one edit."""
    if abs(len(a) - len(b)) > 2:
        return 3
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, char_b in enumerate(b, 1):
            cost = char_a != char_b
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def _prepass(data: dict[Any, Any], model: type[BaseModel], path: FieldPath, collector: Collector) -> dict:
    """Drop (and report) refused, cosmetic and unknown keys; recurse into nested models."""
    allowed = _allowed_keys(model)
    refused = REFUSED.get(model.__name__, {})
    warned = WARNED.get(model.__name__, {})
    cleaned: dict[Any, Any] = {}
    for key, value in data.items():
        key_path = (*path, str(key))
        if not isinstance(key, str):
            collector.issue(key_path, f"keys must be strings, got {key!r}")
            continue
        if model is Phase and key == "tool_inputs":
            if "inputs" in data:
                collector.issue(key_path, "`tool_inputs` is an alias of `inputs`; set only one")
                continue
            for line_path, line in list(collector.lines.items()):
                if line_path[: len(key_path)] == key_path:
                    collector.lines[(*path, "inputs", *line_path[len(key_path) :])] = line
            key = "inputs"
        if key in refused:
            collector.issue(key_path, refused[key])
            continue
        if key in warned:
            collector.warn(key_path, warned[key])
            continue
        if key not in allowed:
            typo = _typo_of(key, allowed)
            if typo is None and model.__name__ in WINDLASS_MODELS:
                collector.warn(key_path, f"unknown key '{key}' is ignored (Windlass ignores it too)")
                continue
            close = typo or next(iter(difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)), None)
            hint = f" (did you mean '{close}'?)" if close else f"; known keys: {', '.join(allowed)}"
            collector.issue(key_path, f"unknown key '{key}'{hint}")
            continue
        nested = _nested_model(model.model_fields[allowed[key]].annotation, value)
        key_path = (*path, key)
        if nested is not None:
            how, child = nested
            if how == "one" and isinstance(value, dict):
                value = _prepass(value, child, key_path, collector)
            elif how == "list" and isinstance(value, list):
                value = [
                    _prepass(
                        item, _item_model(model, allowed[key], item) or child, (*key_path, index), collector
                    )
                    if isinstance(item, dict)
                    else item
                    for index, item in enumerate(value)
                ]
            elif how == "dict" and isinstance(value, dict):
                value = {
                    name: _prepass(item, child, (*key_path, str(name)), collector)
                    if isinstance(item, dict)
                    else item
                    for name, item in value.items()
                }
        cleaned[key] = value
    return cleaned


_MESSAGES = {"missing": "required field is missing", "extra_forbidden": "unknown key"}


def _report_pydantic(exc: Any, data: Any, collector: Collector) -> None:
    """Map pydantic errors onto data paths (skipping union tags) and merge those on one path."""
    merged: dict[FieldPath, list[str]] = {}
    for error in exc.errors(include_url=False):
        loc = error.get("loc", ())
        path: list[str | int] = []
        current = data
        for index, part in enumerate(loc):
            in_dict = isinstance(current, dict) and part in current
            in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
            if in_dict or in_list:
                path.append(part)
                current = current[part]
            elif index == len(loc) - 1 and error["type"] in _MESSAGES:
                path.append(part)
        message = _MESSAGES.get(error["type"]) or str(error.get("msg", "invalid value"))
        message = message.removeprefix("Value error, ")
        messages = merged.setdefault(tuple(path), [])
        if message not in messages:
            messages.append(message)
    for where, messages in merged.items():
        collector.issue(where, "; or ".join(messages))
