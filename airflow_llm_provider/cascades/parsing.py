"""Read a YAML/JSON document into plain data, recording the line of every key, within bounds.

A cascade file is input that may be hostile or careless, and DAG folders are parsed every few
seconds: so the text size, the number of nodes after YAML aliases are expanded ("billion laughs"),
the nesting depth, string and number sizes are bounded (:class:`~.limits.LoadLimits`), each
violation an issue with its line, found in milliseconds and before anything large is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from airflow_llm_provider.cascades.errors import FieldPath, ValidationIssue
from airflow_llm_provider.cascades.limits import LoadLimits, configured_limits

DOCUMENT = "<document>"
YAML_SUFFIXES = (".yaml", ".yml")

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"


def format_path(path: FieldPath) -> str:
    """``('phases', 2, 'handoffs', 0)`` -> ``phases[2].handoffs[0]``."""
    if len(path) > 12:  # a hostile file's nesting must not make an unreadable message
        return f"{format_path(path[:6])}...{format_path(path[-3:])}"
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or DOCUMENT


@dataclass
class Collector:
    """The issues and warnings found in one file, and the line of every field path."""

    file: str
    lines: dict[FieldPath, int] = field(default_factory=dict)
    issues: list[ValidationIssue] = field(default_factory=list)
    warnings: list[ValidationIssue] = field(default_factory=list)

    def line(self, path: FieldPath) -> int | None:
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def issue(self, path: FieldPath, message: str, *, line: int | None = None) -> None:
        where = line if line is not None else self.line(path)
        self.issues.append(ValidationIssue(self.file, where, format_path(path), message))

    def warn(self, path: FieldPath, message: str) -> None:
        self.warnings.append(ValidationIssue(self.file, self.line(path), format_path(path), message))


def _flow_nesting_beyond(text: str, most: int) -> int | None:
    """The line where ``[``/``{`` brackets (JSON, YAML flow style) nest deeper than ``most``, or
    None. One pass, skipping quoted strings; far above the depth limit, so text in a prompt can
    never trip it, while a bracket bomb is refused in milliseconds instead of parsed for seconds."""
    depth = 0
    line = 1
    quote = ""
    escaped = False
    for char in text:
        if char == "\n":
            line += 1
        if quote:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = ""
            continue
        if char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
            if depth > most:
                return line
        elif char in "]}":
            depth = max(0, depth - 1)
    return None


class _TooBig(Exception):
    """A bound was crossed while walking the node tree (the issue is already recorded)."""


def parse_document(text: str, suffix: str, collector: Collector, limits: LoadLimits | None = None) -> Any:
    """The first document of ``text`` as plain data, or None with issues in ``collector``.

    JSON is read as JSON (strict) and composed as YAML only for its line numbers; YAML through
    libyaml when installed (~5x faster on DAG folders).
    """
    import yaml

    limits = limits or configured_limits().load
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_cascade_file_bytes:
        collector.issue(
            (),
            f"the file is {size:,} bytes, over the limit of {limits.max_cascade_file_bytes:,} "
            "([llm_provider] max_cascade_file_bytes)",
            line=1,
        )
        return None
    deep_line = _flow_nesting_beyond(text, max(256, 4 * limits.max_cascade_depth))
    if deep_line is not None:  # decided before a parser spends seconds on thousands of levels
        collector.issue(
            (),
            f"nested deeper than {limits.max_cascade_depth} levels ([llm_provider] max_cascade_depth)",
            line=deep_line,
        )
        return None
    if suffix not in YAML_SUFFIXES:  # .json, or no known extension: strict JSON first
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if suffix == ".json":
                collector.issue((), f"JSON syntax error: {exc.msg}", line=exc.lineno)
                return None
        except (ValueError, RecursionError):
            pass  # an oversized number or deep nesting: the bounded walk below names the line
        else:
            try:
                _compose(text, collector, limits)  # JSON is YAML for our purposes: line numbers
            except yaml.YAMLError:
                collector.lines.clear()
            return None if collector.issues else data
    try:
        return _compose(text, collector, limits)
    except yaml.YAMLError as exc:
        collector.lines.clear()
        mark = getattr(exc, "problem_mark", None)
        context_mark = getattr(exc, "context_mark", None)
        message = f"YAML syntax error: {getattr(exc, 'problem', None) or exc}"
        if context := getattr(exc, "context", None):
            started = f" started on line {context_mark.line + 1}" if context_mark is not None else ""
            message += f" ({context}{started})"
        collector.issue((), message, line=mark.line + 1 if mark is not None else None)
        return None


def _compose(text: str, collector: Collector, limits: LoadLimits) -> Any:
    """Construct the first document, recording the line of every key and list item; nothing is
    constructed unless the whole node tree is within ``limits``."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_node() if loader.check_node() else None
        if node is None:
            return None
        walk = _BoundedWalk(loader, collector, limits)
        try:
            walk.visit(node, ())
        except _TooBig:
            return None
        if collector.issues:
            return None
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _BoundedWalk:
    """Visits the node tree as the constructed data will look (aliases expanded), counting nodes
    and depth, so an alias bomb is caught after ``max_nodes`` steps instead of expanding it."""

    def __init__(self, loader: Any, collector: Collector, limits: LoadLimits) -> None:
        self.loader = loader
        self.collector = collector
        self.limits = limits
        self.nodes = 0

    def fail(self, path: FieldPath, node: Any, message: str) -> None:
        self.collector.issue(path, message, line=node.start_mark.line + 1)
        raise _TooBig

    def visit(self, node: Any, path: FieldPath, active: frozenset[int] = frozenset()) -> None:
        import yaml

        limits, collector = self.limits, self.collector
        collector.lines.setdefault(path, node.start_mark.line + 1)
        self.nodes += 1
        if self.nodes > limits.max_cascade_nodes:
            self.fail(
                path,
                node,
                f"the document has more than {limits.max_cascade_nodes:,} values once YAML aliases are "
                "expanded ([llm_provider] max_cascade_nodes); is an alias repeated in a loop?",
            )
        if len(path) > limits.max_cascade_depth:
            self.fail(
                path,
                node,
                f"nested deeper than {limits.max_cascade_depth} levels ([llm_provider] max_cascade_depth)",
            )
        if id(node) in active:
            self.fail(path, node, "recursive YAML alias: a cascade must be a tree")
        if isinstance(node, yaml.ScalarNode):
            self._check_scalar(node, path)
            return
        active = active | {id(node)}
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.visit(item, (*path, index), active)
            return
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            self._check_scalar(key_node, path)
            key = self.loader.construct_object(key_node)
            if not isinstance(key, str | int | float | bool) or key is None:
                continue
            key_path = (*path, key if isinstance(key, str) else str(key))
            line = key_node.start_mark.line + 1
            if key in seen:
                collector.issue(key_path, f"duplicate key {key!r}", line=line)
            seen.add(key)
            collector.lines[key_path] = line
            self.visit(value_node, key_path, active)
            collector.lines[key_path] = line

    def _check_scalar(self, node: Any, path: FieldPath) -> None:
        limits = self.limits
        value = node.value
        if len(value) > limits.max_cascade_string_chars:
            self.fail(
                path,
                node,
                f"a value of {len(value):,} characters, over the limit of "
                f"{limits.max_cascade_string_chars:,} ([llm_provider] max_cascade_string_chars); "
                "put long prompts in an @file",
            )
        if node.tag in (_INT_TAG, _FLOAT_TAG) and len(value) > limits.max_cascade_number_digits:
            self.fail(
                path,
                node,
                f"a number of {len(value):,} digits, over the limit of {limits.max_cascade_number_digits} "
                "([llm_provider] max_cascade_number_digits)",
            )
