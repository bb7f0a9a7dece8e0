"""Jinja for cascades: a sandboxed environment, and phase references found in the template AST.

Dependencies between phases come from the AST rather than a regex, so filters
(``{{ outputs.x.result | length }}``), subscripts (``outputs['x']``) and ``state.output_x`` count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV: ImmutableSandboxedEnvironment | None = None

STATE_OUTPUT_PREFIX = "output_"


def sandboxed_environment() -> ImmutableSandboxedEnvironment:
    """A fresh sandboxed environment: cascade templates are user input and must not reach Python."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def _shared_environment() -> ImmutableSandboxedEnvironment:
    global _ENV
    if _ENV is None:
        _ENV = sandboxed_environment()
    return _ENV


def is_template(value: str) -> bool:
    """Whether a string holds Jinja markup (plain strings are used as they are)."""
    return "{{" in value or "{%" in value


def referenced_phases(source: str) -> set[str]:
    """
    Phase names a template reads through ``outputs.X``, ``outputs['X']`` or ``state.output_X``.

    :raises jinja2.TemplateSyntaxError: if ``source`` is not valid Jinja
    """
    from jinja2 import nodes

    tree = _shared_environment().parse(source)
    found: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = getattr(node, "node", None)
        if not isinstance(target, nodes.Name):
            continue
        key: object = None
        if isinstance(node, nodes.Getattr):
            key = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            key = node.arg.value
        if not isinstance(key, str):
            continue
        if target.name == "outputs":
            found.add(key)
        elif target.name == "state" and key.startswith(STATE_OUTPUT_PREFIX):
            found.add(key[len(STATE_OUTPUT_PREFIX) :])
    return found
