"""Template rendering limits (issue 14, item 3): hostile templates end with an error naming the
limit, quickly and in bounded memory; ordinary templates render exactly as before.

Each attack renders in a forked child with a wall-clock timeout and an address-space cap, so a
regression fails the test (timeout, MemoryError) instead of hanging or swapping the machine; the
child reports the error, its duration and its peak memory growth (``ru_maxrss``)."""

from __future__ import annotations

import multiprocessing
import resource
import time
from typing import Any

import pytest

from airflow_llm_provider.cascades.limits import Limits
from airflow_llm_provider.cascades.templates import sandboxed_environment

SECONDS = 15.0
"""Longest an attack may take end to end (the engine's own time limit is 10 s, most end in ms)."""
GROWTH_MB = 200
"""Most memory an attack may add (the allocation limit is 32 MiB of characters)."""


def _render_in_child(source: str, variables: dict[str, Any], limits: Limits | None, queue: Any) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))  # a runaway fails, not swaps
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    try:
        environment = sandboxed_environment(limits)
        outcome: tuple[str, str] = ("ok", environment.from_string(source).render(variables)[:200])
    except BaseException as err:  # reported to the parent, whatever it is
        outcome = (type(err).__name__, str(err))
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    queue.put((*outcome, time.monotonic() - started, growth_mb))


def render_bounded(source: str, variables: dict[str, Any] | None = None, limits: Limits | None = None):
    """(error type or "ok", message or output, seconds, memory growth in MB) of one rendering."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_render_in_child, args=(source, variables or {}, limits, queue))
    child.start()
    child.join(SECONDS + 5)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"rendering did not end within {SECONDS + 5:.0f}s: {source[:80]!r}")
    assert not queue.empty(), f"the child died (exit code {child.exitcode}): {source[:80]!r}"
    return queue.get()


ATTACKS = {
    # name: (template, the limit its error must name)
    "integer power": ("{{ 10 ** (10 ** 10) }}", "template_max_int_bits"),
    "integer power of a variable": ("{{ input.n ** input.n }}", "template_max_int_bits"),
    "huge integer literal": ("{{ " + "9" * 1300 + " * 2 }}", "template_max_int_bits"),
    "nested loops": (
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "template_max_operations",
    ),
    "nested empty loops": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "template_max_operations",
    ),
    "recursive macro fan-out": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        "template_max_",  # operations or seconds, whichever comes first on this machine
    ),
    "string repetition": ("{{ 'a' * 10 ** 9 }}", "template_max_output_chars"),
    "list repetition": ("{{ (['x' * 1000] * 1000) * 1000 }}", "template_max_output_chars"),
    "center filter": ("{{ 'a'|center(1000000000) }}", "template_max_output_chars"),
    "center method": ("{{ 'a'.center(1000000000) }}", "template_max_output_chars"),
    "str.format width": ("{{ '{:>1000000000}'.format(1) }}", "template_max_output_chars"),
    "str.format nested width": ("{{ '{:>{}}'.format(1, 10 ** 9) }}", "template_max_output_chars"),
    "printf width": ("{{ '%1000000000d' % 1 }}", "template_max_output_chars"),
    "format filter width": ("{{ '%1000000000d'|format(1) }}", "template_max_output_chars"),
    "indent filter": ("{{ 'a'|indent(1000000000) }}", "template_max_output_chars"),
    "replace blow-up": ("{% set s = 'a' * 100000 %}{{ s|replace('a', s) }}", "template_max_output_chars"),
    "join separator": ("{{ range(100000)|join('x' * 100000) }}", "template_max_output_chars"),
    "slice count": ("{{ [1, 2, 3]|slice(1000000000)|list }}", "template_max_operations"),
    "batch fill": ("{{ [1]|batch(1000000000, 0)|list }}", "template_max_output_chars"),
    "lipsum": ("{{ lipsum(1000000) }}", "template_max_output_chars"),
    "many mid-size values": (
        "{{ range(100000)|map('center', 1000000)|list|length }}",
        "template_max_allocated_chars",
    ),
    "doubling literals": (
        "{% set a = ['x' * 1000] %}" + "".join("{% set a = [a, a] %}" for _ in range(40)) + "{{ a }}",
        "template_max_",
    ),
    "output of a loop": ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "template_max_"),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_hostile_template_ends_with_the_limit_named(name):
    source, limit = ATTACKS[name]

    kind, message, seconds, growth_mb = render_bounded(source, {"input": {"n": 10**6}})

    assert kind in ("TemplateLimitExceeded", "TemplateAssertionError"), (kind, message)
    assert limit in message
    assert "[llm_provider]" in message or kind == "TemplateAssertionError"
    assert seconds < SECONDS
    assert growth_mb < GROWTH_MB


def test_limits_are_configurable_per_environment():
    tight = Limits(template_max_operations=50)
    kind, message, _, _ = render_bounded("{% for i in range(100) %}{{ i }}{% endfor %}", limits=tight)
    assert (kind, "template_max_operations=50" in message) == ("TemplateLimitExceeded", True)

    # The same template within the default limits renders.
    kind, output, _, _ = render_bounded("{% for i in range(100) %}{{ i }}{% endfor %}")
    assert kind == "ok" and output.startswith("0123")


def test_the_time_limit_stops_a_slow_rendering():
    limits = Limits(template_max_seconds=0.5, template_max_operations=10**9)
    kind, message, seconds, _ = render_bounded(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", limits=limits
    )
    assert kind == "TemplateLimitExceeded" and "template_max_seconds=0.5" in message
    assert seconds < 3


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{% for x in items %}{{ loop.index }}:{{ x }}{{ ',' if not loop.last }}{% endfor %}", "1:a,2:b,3:c"),
        ("{{ items|join(', ') }}|{{ items|map('upper')|join }}", "a, b, c|ABC"),
        ("{{ 'a-b'|replace('-', '+') }} {{ 'x'|center(5) }}|{{ '%03d'|format(7) }}", "a+b   x  |007"),
        ("{{ '{}={:>3}'.format('k', 1) }} {{ 'a' ~ 1 ~ [2] }}", "k=  1 a1[2]"),
        ("{% set d = {'k': [1, 2]} %}{% for k, v in d.items() %}{{ k }}{{ v|sum }}{% endfor %}", "k3"),
        (
            "{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}"
            "{{ ns.n }}",
            "6",
        ),
        ("{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m(1) }}{{ m('y') }}", "<1><y>"),
        (
            "{% for n in tree recursive %}{{ n.name }}"
            "{% if n.kids %}({{ loop(n.kids) }}){% endif %}{% endfor %}",
            "r(ab)",
        ),
        (
            "{{ [1, 2, 3, 4, 5]|slice(2)|list }} {{ [1, 2, 3]|batch(2, 0)|list }}",
            "[[1, 2, 3], [4, 5]] [[1, 2], [3, 0]]",
        ),
        (
            "{{ 2 ** 10 }} {{ 7 // 2 }} {{ -3 }} {{ 'ab' * 2 }} {{ text|wordwrap(5) }}",
            "1024 3 -3 abab hello\nworld",
        ),
        ("{{ missing }}|{{ input.x|default('d') }}|{{ items[1:] }}", "|d|['b', 'c']"),
    ],
)
def test_ordinary_templates_render_as_before(source, expected):
    variables = {
        "items": ["a", "b", "c"],
        "input": {},
        "text": "hello world",
        "tree": [{"name": "r", "kids": [{"name": "a"}, {"name": "b"}]}],
    }
    environment = sandboxed_environment()
    assert environment.from_string(source).render(variables) == expected


def test_compiled_expressions_keep_their_type_and_are_bounded_too():
    environment = sandboxed_environment()
    assert environment.compile_expression("items|length * 2")(items=[1, 2]) == 4
    assert environment.compile_expression("{'a': [x, x]}")(x=1) == {"a": [1, 1]}
    started = time.monotonic()
    with pytest.raises(Exception, match="template_max_int_bits"):
        environment.compile_expression("10 ** (10 ** 10)")()
    assert time.monotonic() - started < 1
