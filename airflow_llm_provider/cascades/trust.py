"""What a cascade file may reach: which Python callables, which files, which connections.

Cascade files are code, like DAG files, and are trusted as much as the folder they live in; but
what they reach is explicit, so a file copied from elsewhere (or a model given tools) cannot call
``os.system`` or read ``/etc/passwd``:

- ``python:`` tools only from modules in the dags folder or the cascade's own folder tree, from this
  provider, or under a prefix an admin lists in ``[llm_provider] allowed_python_tools``;
- ``sql:``, ``cascade:`` and ``@file`` paths relative, without ``..``, and inside the cascade's folder
  tree (symlinks resolved);
- the connections a model may query are the ones the cascade names (see ``connection_ids``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from airflow_llm_provider.cascades.settings import option, option_list

if TYPE_CHECKING:
    from airflow_llm_provider.cascades.spec import Cascade

OWN_PACKAGE = "airflow_llm_provider"
ANY_MODULE = "*"


@dataclass(frozen=True)
class PythonToolPolicy:
    """Which ``python:module.function`` references a cascade may use."""

    prefixes: tuple[str, ...]
    folders: tuple[Path, ...]

    def refusal(self, dotted: str) -> str | None:
        """Why ``python:<dotted>`` may not be used, or None when it may. Never imports anything
        but the top-level package's location (``find_spec`` of a top-level name runs no code)."""
        if ANY_MODULE in self.prefixes or any(_under_prefix(dotted, prefix) for prefix in self.prefixes):
            return None
        top = dotted.split(".", 1)[0]
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return f"python:{dotted}: cannot import module '{top}' (not found on the Python path)"
        locations = [spec.origin] if spec.origin else []
        locations += list(spec.submodule_search_locations or [])
        for location in locations:
            if any(_inside(Path(location), folder) for folder in self.folders):
                return None
        where = ", ".join(str(folder) for folder in self.folders) or "no folder"
        return (
            f"python:{dotted} is not allowed: only modules in the dags folder or the cascade's folder "
            f"({where}), this provider's, or under a prefix listed in [llm_provider] allowed_python_tools "
            f"(now: {', '.join(self.prefixes)}) may be called from a cascade"
        )


def python_tool_policy(base_dir: Path | None) -> PythonToolPolicy:
    """The policy for a cascade in ``base_dir`` under the current configuration."""
    folders = [base_dir] if base_dir is not None else []
    dags_folder = option("dags_folder", "core")
    if dags_folder:
        folders.append(Path(dags_folder).expanduser())
    return PythonToolPolicy(
        prefixes=(OWN_PACKAGE, *option_list("allowed_python_tools")),
        folders=tuple(dict.fromkeys(folder.resolve() for folder in folders)),
    )


def _under_prefix(dotted: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return dotted == prefix or dotted.startswith(prefix + ".")


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder)
    except OSError:
        return False


def confined_path(relative: str, base: Path, roots: Iterable[Path] = ()) -> tuple[Path | None, str | None]:
    """``relative`` resolved against ``base``: ``(path, None)``, or ``(None, why)`` when it climbs
    with ``..`` or resolves (an absolute path, a symlink) outside ``base`` and ``roots``."""
    pure = PurePath(relative)
    rule = "cascade files may only name files in their own folder tree"
    if relative.startswith("~"):
        return None, f"'{relative}' names a home folder; {rule}"
    if ".." in pure.parts:
        return None, f"'{relative}' climbs out with '..'; {rule}"
    candidate = (base / pure).resolve()
    allowed = [base.resolve(), *(root.resolve() for root in roots)]
    if not any(candidate.is_relative_to(root) for root in allowed):
        return None, f"'{relative}' resolves to {candidate}, outside the cascade's folder tree; {rule}"
    return candidate, None


CONNECTION_ARGUMENTS = ("conn_id", "connection")
"""Tool arguments that name an Airflow connection (ours: ``conn_id``; Windlass: ``connection``)."""


def connection_ids(cascade: Cascade) -> frozenset[str]:
    """The connections a cascade's tools may be called with: its ``connections:`` list and the ones
    its tool phases name literally. A model (or a templated value) cannot pick any other."""
    from airflow_llm_provider.cascades.templates import is_template

    named = set(cascade.connections)
    for phase in cascade.phases:
        for key in CONNECTION_ARGUMENTS:
            value = (phase.inputs or {}).get(key)
            if phase.tool is not None and isinstance(value, str) and not is_template(value):
                named.add(value)
    return frozenset(named)


def connection_refusal(tool: str, arguments: Mapping[str, Any], allowed: frozenset[str]) -> str | None:
    """Why a call of ``tool`` with ``arguments`` may not go out, or None."""
    for key in CONNECTION_ARGUMENTS:
        value = arguments.get(key)
        if value is not None and str(value) not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            return (
                f"tool {tool}: {key}={str(value)!r} is not a connection this cascade names (listed: "
                f"{listed}); add it to the cascade's `connections:` to allow it"
            )
    return None
