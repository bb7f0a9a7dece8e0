"""What a value given to kcli may look like: one set of rules for the hook, the operators and the
deployment specs.

kcli parses its command line with argparse, so a positional value (a VM, plan or cluster name) or an
option's value (``-i IMAGE``, ``-p PROFILE``, ``-C CLIENT``) that starts with ``-`` is read as an
option: ``image="--force"`` changes what kcli does. Characters that do not print are refused in every
value: control characters (``\\r``, ``\\n``, ``\\t``, NUL...) split or rewrite what logs, shells and
kcli's own parsers see, and Unicode format and separator characters (bidi overrides such as U+202E,
U+2028 LINE SEPARATOR, zero-width characters) make a name display as something it is not, in the task
log, the UI or ``kcli list vm``. Categories refused: Cc, Cf, Zl, Zp, and Cs (a lone surrogate cannot
even be encoded to reach the host).

Pure (no Airflow import): the deployment spec parser uses it at DAG-parse time, the operators at
construction, the hook right before kcli runs. Callers raise their own error type with the message.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

REFUSED_CATEGORIES = {
    "Cc": "control character",
    "Cf": "format character",
    "Zl": "line separator",
    "Zp": "paragraph separator",
    "Cs": "surrogate",
}


class KcliArgumentError(ValueError):
    """A value that must not reach kcli; the message names the field and the character."""


def describe_char(ch: str) -> str:
    """``\\r (U+000D, a control character)``, ``\\u202e (U+202E RIGHT-TO-LEFT OVERRIDE, a format
    character)``: escaped, so the message itself is safe to log and display."""
    name = unicodedata.name(ch, "")
    kind = REFUSED_CATEGORIES.get(unicodedata.category(ch), "character")
    return f"{ascii(ch)[1:-1]} (U+{ord(ch):04X}{' ' + name if name else ''}, a {kind})"


def refused_char(text: str) -> tuple[int, str] | None:
    """The position and the first character of ``text`` that may not reach kcli, or ``None``."""
    for index, ch in enumerate(text):
        if unicodedata.category(ch) in REFUSED_CATEGORIES:
            return index, ch
    return None


def value_problem(value: str, *, option_like_ok: bool = False) -> str | None:
    """Why ``value`` cannot be given to kcli (without naming the value), or ``None``.

    :param option_like_ok: a leading ``-`` is harmless (the text is not an argv item of its own,
        e.g. the value part of ``-P key=value``).
    """
    if not option_like_ok and value.startswith("-"):
        return "starts with '-': kcli would read it as an option"
    hit = refused_char(value)
    if hit is not None:
        index, ch = hit
        return f"contains {describe_char(ch)} at position {index}"
    return None


def check_kcli_value(value: Any, field: str, *, option_like_ok: bool = False, show: bool = True) -> str:
    """``value`` if it may be given to kcli as ``field``; :class:`KcliArgumentError` otherwise.

    :param show: put the value (escaped) in the message; off for values that may be secret.
    """
    if not isinstance(value, str) or not value.strip():
        shown = f", not {value!a}" if show else ""
        raise KcliArgumentError(f"{field} must be a non-empty string{shown}")
    problem = value_problem(value, option_like_ok=option_like_ok)
    if problem is not None:
        raise KcliArgumentError(f"{field} {ascii(value) + ' ' if show else ''}{problem}")
    return value


def params_problems(params: Mapping[str, Any] | None, field: str = "kcli_params") -> list[str]:
    """What in ``params`` (kcli ``-P key=value`` parameters) may not reach kcli: keys and every
    string at any depth (nested values reach kcli as JSON that its YAML parser decodes again).
    Values are never quoted in the messages: a parameter may be a password."""
    problems: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                key_problem = value_problem(str(key), option_like_ok=True)
                if key_problem is not None:
                    problems.append(f"{where} has a key that {key_problem}")
                walk(item, f"{where}[{str(key)!a}]")
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]")
        elif isinstance(value, str):
            problem = value_problem(value, option_like_ok=True)
            if problem is not None:
                problems.append(f"{where} {problem}")

    walk(dict(params or {}), field)
    return problems
