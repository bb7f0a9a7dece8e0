"""Jinja for cascades: a sandboxed environment, and phase references found in the template AST.

Dependencies between phases come from the AST rather than a regex, so filters
(``{{ outputs.x.result | length }}``), subscripts (``outputs['x']``) and ``state.output_x`` count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_llm_provider.cascades.limits import Limits, configured_limits

if TYPE_CHECKING:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV: ImmutableSandboxedEnvironment | None = None

STATE_OUTPUT_PREFIX = "output_"


WINDLASS_VARIABLES = frozenset(
    {"input", "state", "outputs", "history", "lineage", "sounding_index", "sounding_factor", "is_sounding"}
)
"""What every cascade template sees, as in Windlass."""

AIRFLOW_VARIABLES = (
    "ds",
    "ds_nodash",
    "ts",
    "logical_date",
    "data_interval_start",
    "data_interval_end",
    "params",
)
"""Airflow run variables a cascade run under Airflow also sees (absent ones are left out)."""

RETRY_VARIABLES = frozenset({"validation_error", "attempt", "max_attempts"})
TURN_VARIABLES = frozenset({"turn", "max_turns"})
MAP_VARIABLES = frozenset({"item", "item_index"})
ROW_VARIABLES = frozenset({"row", "row_index"})


def sandboxed_environment(limits: Limits | None = None) -> ImmutableSandboxedEnvironment:
    """A fresh sandboxed environment: cascade templates are user input and must not reach Python,
    nor exhaust the worker: every rendering is bounded by the ``template_*`` settings of
    ``limits`` (default: the configured ones), see :mod:`._template_limits`.

    An undefined name renders as Jinja's default does, empty, as in Windlass (``{{ input.x }}``
    without ``x`` is ``""``); using it further (``{{ input.x.y }}``) is an error. ``validate``
    warns about names nothing provides.
    """
    from airflow_llm_provider.cascades._template_limits import LimitedEnvironment

    return LimitedEnvironment(limits or configured_limits())


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


def reads_state_beyond_outputs(source: str) -> bool:
    """Whether a template reads ``state`` other than through ``state.output_<phase>`` (keys that
    ``set_state``, extraction or the engine write at run time).

    :raises jinja2.TemplateSyntaxError: if ``source`` is not valid Jinja
    """
    from jinja2 import nodes

    tree = _shared_environment().parse(source)
    names = sum(1 for node in tree.find_all(nodes.Name) if node.name == "state")
    outputs = 0
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = getattr(node, "node", None)
        key = (
            node.attr
            if isinstance(node, nodes.Getattr)
            else getattr(getattr(node, "arg", None), "value", None)
        )
        if isinstance(target, nodes.Name) and target.name == "state":
            outputs += isinstance(key, str) and key.startswith(STATE_OUTPUT_PREFIX)
    return names > outputs


def undeclared_variables(source: str) -> set[str]:
    """Top-level names a template reads without setting them itself.

    :raises jinja2.TemplateSyntaxError: if ``source`` is not valid Jinja
    """
    from jinja2 import meta

    return set(meta.find_undeclared_variables(_shared_environment().parse(source)))
