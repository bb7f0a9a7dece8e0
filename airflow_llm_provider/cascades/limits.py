"""Resource limits on everything a cascade file or a model controls, with safe defaults.

A cascade is user input and a model's reply is someone else's: neither may make a worker allocate
gigabytes, spin forever or wait forever. Each limit is a setting of the ``[llm_provider]`` section
(``airflow.cfg`` or ``AIRFLOW__LLM_PROVIDER__<NAME>``), read here without importing Airflow: the
engine stays pure, and when Airflow is already loaded its ``conf`` answers (so airflow.cfg works).

Standard library only: the template sandbox and the validator import this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from airflow_llm_provider.cascades.settings import SECTION as CONFIG_SECTION
from airflow_llm_provider.cascades.settings import option

ENV_PREFIX = f"AIRFLOW__{CONFIG_SECTION.upper()}__"


@dataclass(frozen=True)
class LoadLimits:
    """Bounds on reading a cascade file (``parsing.py``, ``loader.py``), each an ``[llm_provider]``
    setting of the same name."""

    max_cascade_file_bytes: int = 1_048_576
    """A cascade file larger than this is refused unread (Windlass's largest example: 14 KB)."""
    max_cascade_nodes: int = 100_000
    """Values in the document once YAML aliases are expanded (stops "billion laughs")."""
    max_cascade_depth: int = 64
    """Nesting levels of mappings and lists."""
    max_cascade_string_chars: int = 262_144
    """Characters in one string value; longer prompts belong in an ``@file``."""
    max_cascade_number_digits: int = 100
    """Digits in one number literal."""
    max_cascade_phases: int = 500
    """Phases in one cascade."""


@dataclass(frozen=True)
class Limits:
    """Every runtime and load limit of the engine. Each field is a ``[llm_provider]`` setting of
    the same name (registered in ``get_provider_info.py``); ``configured_limits()`` reads them."""

    # -- runtime limits (issue 14, item 3) ------------------------------------------------------
    max_soundings: int = 20
    """Soundings of a phase or of the whole cascade (``soundings.factor``, the sum of a
    ``soundings.models`` map's factors, ``reforge.steps`` and ``reforge.factor_per_step``)."""
    max_map_items: int = 1024
    """Items of one ``map_over`` fan-out (Airflow's own ``max_map_length`` default is 1024)."""
    max_sub_cascade_runs: int = 100
    """Child cascade runs started by one run and all its descendants together (``sub_cascades``,
    ``async_cascades``, ``tool: cascade:``, cascades offered in ``tackle``)."""
    llm_phase_timeout: float = 900.0
    """Seconds an LLM phase (all its turns, attempts, soundings and sub-cascades) may take when
    the phase sets no ``timeout`` of its own."""
    llm_request_timeout: float = 120.0
    """Seconds one HTTP request to a model may take (the OpenAI client's own default is 600 s,
    tried 3 times); a connection's ``extra.timeout`` overrides it."""
    max_reply_chars: int = 262_144
    """Characters of one output, input, item or state block put into a prompt; the rest is cut
    with a marker that says so (the stored output stays whole)."""
    template_max_output_chars: int = 1_048_576
    """Characters a template renders, and the size of any one value it builds."""
    template_max_operations: int = 1_000_000
    """Loop iterations, calls, filters, operators and attribute look-ups of one rendering."""
    template_max_allocated_chars: int = 33_554_432
    """Characters of all the strings, lists and output one rendering builds, added up."""
    template_max_int_bits: int = 4096
    """Bits of an integer a template writes or computes (``10 ** (10 ** 10)`` is refused)."""
    template_max_seconds: float = 10.0
    """Wall-clock seconds of one rendering."""
    # -- load limits ------------------------------------------------------------------------------
    load: LoadLimits = field(default_factory=LoadLimits)


class LimitExceeded(RuntimeError):
    """A resource limit was hit; the message names the limit and where it is set."""

    def __init__(self, setting: str, value: object, message: str) -> None:
        super().__init__(
            f"{message} (limit {setting}={value}; raise it with [{CONFIG_SECTION}] {setting} or "
            f"{ENV_PREFIX}{setting.upper()})"
        )
        self.setting = setting


class TemplateLimitExceeded(LimitExceeded):
    """A template rendering went over one of the ``template_*`` limits."""


def configured_limits() -> Limits:
    """The limits in effect: each field from ``[llm_provider] <field>`` when Airflow is loaded
    (its ``conf`` reads airflow.cfg and the environment), else from ``AIRFLOW__LLM_PROVIDER__<FIELD>``,
    else the default.

    :raises ValueError: if a setting is not a positive number (naming the setting)
    """
    load = LoadLimits(**_read(LoadLimits))
    return Limits(load=load, **_read(Limits))


def _read(kind: type) -> dict[str, Any]:
    """The settings of ``kind``'s number fields that are set, parsed."""
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(kind):
        if spec.type not in (int, float, "int", "float"):
            continue  # a nested group (``load``)
        raw = option(spec.name, CONFIG_SECTION)
        if raw is None or not raw.strip():
            continue
        values[spec.name] = _parse(spec.name, spec.type, raw)
    return values


def _parse(name: str, kind: Any, raw: str) -> int | float:
    as_float = kind in (float, "float")
    try:
        value: int | float = float(raw) if as_float else int(raw.strip())
    except ValueError:
        expected = "a number" if as_float else "an integer"
        raise ValueError(f"[{CONFIG_SECTION}] {name} must be {expected}, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"[{CONFIG_SECTION}] {name} must be greater than 0, got {raw!r}")
    return value


class Tally:
    """A count shared by a run and all its descendants (sub-cascade runs), checked on each
    increment against a limit. Plain attribute arithmetic: the engine runs on one event loop."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def add(self, setting: str, limit: int, what: str) -> None:
        """Count one more; raises :class:`LimitExceeded` (and counts nothing) beyond ``limit``."""
        if self.count >= limit:
            raise LimitExceeded(setting, limit, f"{what}: this run already started {self.count}")
        self.count += 1


def limit_in(error: BaseException | None) -> LimitExceeded | None:
    """The :class:`LimitExceeded` that caused ``error`` (itself, or up its cause chain), if any:
    a limit is final, so wrappers (a failed sub-cascade, a failed tool) must not retry it."""
    seen = 0
    while error is not None and seen < 50:
        if isinstance(error, LimitExceeded):
            return error
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def clip(text: str, limit: int, what: str = "text") -> str:
    """``text`` cut to ``limit`` characters with a marker saying how much was left out."""
    if len(text) <= limit:
        return text
    return (
        f"{text[:limit]}\n\n[... {what} truncated: {len(text) - limit} of {len(text)} characters left "
        f"out (max_reply_chars={limit}) ...]"
    )
