"""The one sandboxed Jinja environment of cascades, with resource limits on every rendering.

Jinja's sandbox keeps templates away from Python internals but not from the machine: it bounds
``range()`` to 100,000 items and nothing else, so ``{{ 10 ** (10 ** 10) }}``, nested loops,
``'a' * 10 ** 9`` or ``'x'|center(10 ** 9)`` hang a worker or fill its memory. Here every
rendering carries a meter (:class:`_Meter`), and

- each loop iteration, call, filter, test, operator and attribute look-up is one *operation*
  (``template_max_operations``), and the wall clock is checked as they go
  (``template_max_seconds``);
- every value the template builds (operator and call results, filter results, list/dict/tuple
  literals, ``~`` joins, slices, output) is measured, flattened as it would print, against
  ``template_max_output_chars`` each and ``template_max_allocated_chars`` in total, and the
  rendered text against ``template_max_output_chars``;
- operations whose result size their arguments decide are checked *before* they run: ``**`` and
  ``*`` (integers, repeated strings and lists), ``%`` and ``format`` (printf widths), str.format
  widths, ``center``/``ljust``/``rjust``/``zfill``/``expandtabs``/``replace``/``join`` (methods and
  filters), ``indent``, ``wordwrap``, ``batch``, ``slice`` and ``lipsum``;
- integers are bounded to ``template_max_int_bits`` (literals when compiled, results when made).

The hooks are Jinja's documented sandbox hooks (``intercepted_binops``/``call_binop``,
``intercepted_unops``/``call_unop``, ``call``, ``getattr``, ``getitem``, ``wrap_str_format``), its
``finalize`` and the ``code_generator_class``/``template_class`` extension points: the code
generator wraps each ``for`` loop's iterable, each ``~`` join, each container literal and the
template's literal text in a call to the environment, so no loop runs unmetered.
"""

from __future__ import annotations

import inspect
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextvars import ContextVar
from functools import wraps
from typing import Any, TypeGuard, cast

from jinja2 import Undefined, nodes, pass_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Template
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from airflow_llm_provider.cascades.limits import Limits, TemplateLimitExceeded

_METER: ContextVar[_Meter | None] = ContextVar("cascade_template_meter", default=None)
_CLOCK_EVERY = 256
"""Operations between two looks at the clock (time.monotonic costs ~50 ns, an operation ~1 µs)."""
_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
_NUMBER = re.compile(r"\d+")


class _Meter:
    """What one rendering has spent so far."""

    __slots__ = ("allocated", "deadline", "limits", "operations", "output")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.operations = 0
        self.allocated = 0
        self.output = 0
        self.deadline = time.monotonic() + limits.template_max_seconds

    def step(self, count: int = 1) -> None:
        before = self.operations
        self.operations += count
        if self.operations > self.limits.template_max_operations:
            raise TemplateLimitExceeded(
                "template_max_operations",
                self.limits.template_max_operations,
                "template does too much work: more loop iterations, calls, filters and operators "
                "than allowed in one rendering",
            )
        if before // _CLOCK_EVERY != self.operations // _CLOCK_EVERY and time.monotonic() > self.deadline:
            raise TemplateLimitExceeded(
                "template_max_seconds",
                self.limits.template_max_seconds,
                "template rendering takes too long",
            )

    def allocate(self, size: int) -> None:
        self.allocated += size
        if self.allocated > self.limits.template_max_allocated_chars:
            raise TemplateLimitExceeded(
                "template_max_allocated_chars",
                self.limits.template_max_allocated_chars,
                f"template builds too much data: {self.allocated:,} characters of strings and lists so far",
            )


def _flat_size(value: Any, budget: int) -> int:
    """About how many characters ``value`` prints as, counting shared parts each time they
    appear; stops as soon as the count passes ``budget`` (so measuring is bounded too)."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, bool) or item is None or isinstance(item, float):
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            if total <= budget:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            if total <= budget:
                stack.extend(item)
        else:  # ranges, generators, macros, namespaces...: their repr is short
            total += 16
        if total > budget:
            return total
    return total


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with resource limits on every rendering (module docstring)."""

    # Every operator goes through call_binop/call_unop; intercepted operators are also never
    # folded at compile time, so ``{{ 10 ** (10 ** 10) }}`` cannot hang the compiler either.
    intercepted_binops = frozenset(ImmutableSandboxedEnvironment.default_binop_table)
    intercepted_unops = frozenset(ImmutableSandboxedEnvironment.default_unop_table)

    def __init__(self, limits: Limits) -> None:
        # Nothing is evaluated while compiling (no meter runs then): no constant folding by the
        # optimizer, and a finalize that takes the context, which Jinja never calls at compile time.
        super().__init__(undefined=Undefined, autoescape=False, finalize=_finalize, optimized=False)
        self.limits = limits
        self.code_generator_class = _MeteredCodeGenerator
        self.template_class = _MeteredTemplate
        self.filters = {name: _metered(self, name, f) for name, f in dict(self.filters).items()}
        tests = cast("dict[str, Callable[..., Any]]", self.tests)  # typeshed: "function"
        self.tests = {name: _metered(self, name, f) for name, f in tests.items()}
        lipsum = self.globals.get("lipsum")
        if callable(lipsum):
            self.globals["lipsum"] = _bounded_lipsum(lipsum, limits)

    # -- measuring -------------------------------------------------------------------------------
    def _refuse(self, what: str, size: int) -> TemplateLimitExceeded:
        return TemplateLimitExceeded(
            "template_max_output_chars",
            self.limits.template_max_output_chars,
            f"template {what} would be about {size:,} characters",
        )

    def _produced(self, value: Any, what: str = "value") -> Any:
        """Measure a value the template just built: one value at most the output limit, all of
        them together at most the allocation limit; integers at most the bit limit."""
        if isinstance(value, int) and not isinstance(value, bool):
            self._check_int(value)
            return value
        if not isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
            return value  # generators are measured item by item where they are consumed
        size = _flat_size(value, self.limits.template_max_output_chars)
        if size > self.limits.template_max_output_chars:
            raise self._refuse(what, size)
        meter = _METER.get()
        if meter is not None:
            meter.allocate(size)
        return value

    def _check_int(self, value: int) -> None:
        if value.bit_length() > self.limits.template_max_int_bits:
            raise TemplateLimitExceeded(
                "template_max_int_bits",
                self.limits.template_max_int_bits,
                f"template integer of {value.bit_length():,} bits",
            )

    def _check_size(self, size: int, what: str) -> None:
        """Refuse an operation whose result would be ``size`` characters, before it runs."""
        if size > self.limits.template_max_output_chars:
            raise self._refuse(what, size)

    @staticmethod
    def _step(count: int = 1) -> None:
        meter = _METER.get()
        if meter is not None:
            meter.step(count)

    # -- hooks the generated code calls ------------------------------------------------------------
    def guard_loop(self, iterable: Any) -> Iterator[Any]:
        """The iterable of a ``for`` loop: one operation per item."""
        meter = _METER.get()
        for item in iterable:
            if meter is not None:
                meter.step()
            yield item

    def made(self, value: Any) -> Any:
        """A list/tuple/dict literal or a ``~`` join the template just built."""
        self._step()
        return self._produced(value)

    def emit(self, text: str) -> str:
        """Literal template text, each time it is written (a loop writes it many times)."""
        meter = _METER.get()
        if meter is not None:
            meter.step()
            meter.allocate(len(text))
        return text

    def _finalize_output(self, value: Any) -> Any:
        """Every ``{{ ... }}`` before it is turned into text."""
        self._step()
        if isinstance(value, str):
            self._check_size(len(value), "output")
            meter = _METER.get()
            if meter is not None:
                meter.allocate(len(value))
            return value
        return self._produced(value, "output")

    # -- sandbox hooks -----------------------------------------------------------------------------
    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self._step()
        self._check_binop(operator, left, right)
        return self._produced(super().call_binop(context, operator, left, right))

    def call_unop(self, context: Any, operator: str, arg: Any) -> Any:
        self._step()
        return self._produced(super().call_unop(context, operator, arg))

    def getattr(self, obj: Any, attribute: str) -> Any:
        self._step()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self._step()
        value = super().getitem(obj, argument)
        return self._produced(value, "slice") if isinstance(argument, slice) else value

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        __self._step()
        if isinstance(__obj, LoopContext) and args:  # ``loop(children)`` of a recursive loop
            args = (__self.guard_loop(args[0]), *args[1:])
        else:
            args = __self._check_method(__obj, args)
        return __self._produced(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        formatter = super().wrap_str_format(value)
        if formatter is None:
            return None
        template: str = value.__self__
        is_map = value.__name__ == "format_map"

        def bounded(*args: Any, **kwargs: Any) -> str:
            named = args[0] if is_map and args and isinstance(args[0], Mapping) else kwargs
            self._check_format(template, list(args) + list(named.values()))
            return formatter(*args, **kwargs)

        return bounded

    # -- checks before an operation ----------------------------------------------------------------
    def _check_binop(self, operator: str, left: Any, right: Any) -> None:
        limit = self.limits.template_max_output_chars
        if _is_int(left) and _is_int(right):
            if operator == "**" and right > 0 and abs(left) > 1:
                bits = (abs(left).bit_length() - 1) * right
                if bits > self.limits.template_max_int_bits:
                    raise TemplateLimitExceeded(
                        "template_max_int_bits",
                        self.limits.template_max_int_bits,
                        f"template integer power of at least {bits:,} bits",
                    )
            elif (
                operator == "*"
                and left.bit_length() + right.bit_length() > self.limits.template_max_int_bits + 1
            ):
                raise TemplateLimitExceeded(
                    "template_max_int_bits",
                    self.limits.template_max_int_bits,
                    f"template integer product of about {left.bit_length() + right.bit_length():,} bits",
                )
            return
        if operator == "*":
            sequence, times = (left, right) if _is_int(right) else (right, left)
            if _is_int(times) and isinstance(sequence, str | bytes | list | tuple):
                size = _flat_size(sequence, limit // max(times, 1) + 1) * max(times, 0)
                self._check_size(size, "repetition")
        elif operator == "%" and isinstance(left, str):
            values = list(right.values()) if isinstance(right, Mapping) else right
            self._check_printf(left, values if isinstance(values, list | tuple) else [values])
        elif operator == "+" and isinstance(left, str) and isinstance(right, str):
            self._check_size(len(left) + len(right), "string")

    def _check_printf(self, template: str, values: Iterable[Any]) -> None:
        """``%`` formatting: a width or precision beyond the output limit is refused, and so is
        a ``*`` width whose value is."""
        limit = self.limits.template_max_output_chars
        star = False
        for match in _PRINTF.finditer(template):
            for group in match.groups():
                if group == "*":
                    star = True
                elif group and (len(group) > 12 or int(group) > limit):
                    self._check_size(limit + 1, "formatted text")
        if star:
            for value in values:
                if _is_int(value) and abs(value) > limit:
                    self._check_size(abs(value), "formatted text")

    def _check_format(self, template: str, values: Iterable[Any]) -> None:
        """``str.format``: the same for widths in format specs (nested ``{}`` specs: their values)."""
        limit = self.limits.template_max_output_chars
        nested = False
        try:
            fields = list(string.Formatter().parse(template))
        except ValueError:
            return  # str.format raises the same error itself
        for _, _, spec, _ in fields:
            if not spec:
                continue
            nested = nested or "{" in spec
            for number in _NUMBER.findall(spec):
                if len(number) > 12 or int(number) > limit:
                    self._check_size(limit + 1, "formatted text")
        if nested:
            for value in values:
                if _is_int(value) and abs(value) > limit:
                    self._check_size(abs(value), "formatted text")

    def _check_method(self, method: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """String methods whose result size an argument decides."""
        owner = getattr(method, "__self__", None)
        if not isinstance(owner, str | bytes):
            return args
        name = getattr(method, "__name__", "")
        if name in ("center", "ljust", "rjust", "zfill") and args and _is_int(args[0]):
            self._check_size(args[0], name)
        elif name == "expandtabs":
            size = args[0] if args and _is_int(args[0]) else 8
            tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
            self._check_size(len(owner) + tabs * size, name)
        elif name == "replace" and len(args) >= 2:
            self._check_size(_replaced_size(owner, args[0], args[1], args[2] if len(args) > 2 else -1), name)
        elif name == "join" and args:
            items = list(args[0]) if not isinstance(args[0], list | tuple) else args[0]
            self._check_size(len(owner) * max(len(items) - 1, 0), name)
            return (items, *args[1:])
        return args


@pass_context
def _finalize(context: Any, value: Any) -> Any:
    return context.environment._finalize_output(value)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _replaced_size(text: Any, old: Any, new: Any, count: Any) -> int:
    if (
        not isinstance(text, str | bytes)
        or not isinstance(old, type(text))
        or not isinstance(new, type(text))
    ):
        return len(text) if isinstance(text, str | bytes) else 0
    occurrences = text.count(old)  # type: ignore[arg-type]  # old is of text's own type
    if _is_int(count) and count >= 0:
        occurrences = min(occurrences, count)
    return len(text) + occurrences * max(len(new) - len(old), 0)


# -- filters ---------------------------------------------------------------------------------------
_PASSED_NAMES = frozenset({"context", "eval_ctx", "environment", "env", "ctx"})


def _metered(environment: LimitedEnvironment, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter or test that counts as an operation, is checked before it runs when its
    arguments decide its result size, and whose result is measured."""
    check = _FILTER_CHECKS.get(name)
    try:
        signature = inspect.signature(function) if check is not None else None
    except (TypeError, ValueError):
        signature = None
    # Jinja passes the context/environment first to a filter marked for it; some built-ins are
    # wrappers (async variants) whose signature, that of the wrapped function, lacks that argument.
    skip = int(
        hasattr(function, "jinja_pass_arg")
        and signature is not None
        and next(iter(signature.parameters), "") not in _PASSED_NAMES
    )

    @wraps(function)  # keeps jinja_pass_arg: Jinja still passes the context/environment first
    def metered(*args: Any, **kwargs: Any) -> Any:
        LimitedEnvironment._step()
        if check is not None and signature is not None:
            try:
                bound = signature.bind(*args[skip:], **kwargs)
            except TypeError:
                pass  # the filter raises the same error itself
            else:
                bound.apply_defaults()
                check(environment, bound.arguments)
        return environment._produced(function(*args, **kwargs), f"'{name}' result")

    return metered


def _check_width(environment: LimitedEnvironment, arguments: Mapping[str, Any]) -> None:
    width = arguments.get("width")
    if _is_int(width):
        environment._check_size(width, "padded text")


def _check_indent(environment: LimitedEnvironment, arguments: Mapping[str, Any]) -> None:
    text, width = arguments.get("s"), arguments.get("width")
    lines = str(text).count("\n") + 1 if isinstance(text, str) else 1
    each = width if _is_int(width) else len(str(width))
    environment._check_size(lines * max(each, 0), "indented text")


def _check_replace(environment: LimitedEnvironment, arguments: Mapping[str, Any]) -> None:
    text = arguments.get("s")
    size = _replaced_size(
        str(text) if not isinstance(text, str) else text,
        str(arguments.get("old")),
        str(arguments.get("new")),
        arguments.get("count"),
    )
    environment._check_size(size, "replaced text")


def _check_join(environment: LimitedEnvironment, arguments: Mapping[str, Any]) -> None:
    value, separator = arguments.get("value"), arguments.get("d")
    if isinstance(value, Sized):
        environment._check_size(len(str(separator)) * max(len(value) - 1, 0), "joined text")


def _check_format_filter(environment: LimitedEnvironment, arguments: Mapping[str, Any]) -> None:
    values = list(arguments.get("args") or ()) + list((arguments.get("kwargs") or {}).values())
    environment._check_printf(str(arguments.get("value")), values)


def _check_wordwrap(environment: LimitedEnvironment, arguments: Mapping[str, Any]) -> None:
    text, width = str(arguments.get("s")), arguments.get("width")
    wrap = arguments.get("wrapstring")
    breaks = len(text) // max(width if _is_int(width) else 1, 1) + 1
    environment._check_size(len(text) + breaks * len(str(wrap or "\n")), "wrapped text")


def _check_batch(environment: LimitedEnvironment, arguments: Mapping[str, Any]) -> None:
    count = arguments.get("linecount")
    if arguments.get("fill_with") is not None and _is_int(count):
        environment._check_size(2 * count, "batch")


def _check_slice(environment: LimitedEnvironment, arguments: Mapping[str, Any]) -> None:
    count = arguments.get("slices")
    if _is_int(count):
        environment._step(max(count, 0))  # the filter loops over range(slices)


_FILTER_CHECKS: dict[str, Callable[[LimitedEnvironment, Mapping[str, Any]], None]] = {
    "center": _check_width,
    "indent": _check_indent,
    "replace": _check_replace,
    "join": _check_join,
    "format": _check_format_filter,
    "wordwrap": _check_wordwrap,
    "batch": _check_batch,
    "slice": _check_slice,
}


def _bounded_lipsum(lipsum: Callable[..., Any], limits: Limits) -> Callable[..., Any]:
    @wraps(lipsum)
    def bounded(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> Any:
        words = (n if _is_int(n) else 1) * (max if _is_int(max) else 1) * 10
        if words > limits.template_max_output_chars:
            raise TemplateLimitExceeded(
                "template_max_output_chars",
                limits.template_max_output_chars,
                f"lipsum() of about {words:,} characters",
            )
        return lipsum(n=n, html=html, min=min, max=max)

    return bounded


# -- code generation -------------------------------------------------------------------------------
class _MeteredCodeGenerator(CodeGenerator):
    """Jinja's code generator with every loop, literal container, ``~`` join and piece of literal
    text routed through the environment's meter (see :class:`LimitedEnvironment`)."""

    def _environment_call(self, method: str, argument: nodes.Node, lineno: int | None) -> nodes.Call:
        call = nodes.Call(nodes.EnvironmentAttribute(method), [argument], [], None, None, lineno=lineno)
        call.set_environment(self.environment)
        return call

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        guarded = nodes.For(
            node.target,
            self._environment_call("guard_loop", node.iter, node.lineno),
            node.body,
            node.else_,
            node.test,
            node.recursive,
            lineno=node.lineno,
        )
        guarded.set_environment(self.environment)
        super().visit_For(guarded, frame)

    def visit_Const(self, node: nodes.Const, frame: Frame) -> None:
        value = node.value
        limits: Limits = self.environment.limits  # type: ignore[attr-defined]
        if _is_int(value) and value.bit_length() > limits.template_max_int_bits:
            self.fail(
                f"integer literal of {value.bit_length():,} bits is over template_max_int_bits "
                f"({limits.template_max_int_bits})",
                node.lineno,
            )
        super().visit_Const(node, frame)

    def _wrapped(self, visit: Callable[[Any, Frame], None], node: Any, frame: Frame) -> None:
        self.write("environment.made(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self._wrapped(super().visit_List, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self._wrapped(super().visit_Dict, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx == "store":  # an assignment target (``{% for k, v in ... %}``), not a value
            super().visit_Tuple(node, frame)
        else:
            self._wrapped(super().visit_Tuple, node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self._wrapped(super().visit_Concat, node, frame)

    def _output_const_repr(self, group: Iterable[Any]) -> str:
        return f"environment.emit({super()._output_const_repr(group)})"


class _MeteredTemplate(Template):
    """A template whose every rendering (``render``, and expressions compiled with
    ``compile_expression``) runs under a fresh meter, and whose output is bounded as it streams."""

    @classmethod
    def _from_namespace(cls, environment: Any, namespace: Any, globals: Any) -> Template:
        template = super()._from_namespace(environment, namespace, globals)
        template.root_render_func = _metered_root(template.root_render_func, environment.limits)
        return template


def _metered_root(root: Callable[[Any], Iterator[str]], limits: Limits) -> Callable[[Any], Iterator[str]]:
    def render(context: Any) -> Iterator[str]:
        meter = _Meter(limits)
        previous = _METER.get()
        _METER.set(meter)
        try:
            for piece in root(context):
                meter.output += len(piece)
                if meter.output > limits.template_max_output_chars:
                    raise TemplateLimitExceeded(
                        "template_max_output_chars",
                        limits.template_max_output_chars,
                        f"template renders more than {limits.template_max_output_chars:,} characters",
                    )
                yield piece
        finally:
            _METER.set(previous)

    return render
