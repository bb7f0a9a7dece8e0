"""The code family of built-in tools: Windlass's ``linux_shell``, ``run_code`` and
``linux_shell_dangerous``.

Windlass runs ``linux_shell`` (and ``run_code``, a Python heredoc through it) with ``docker exec``
in a long-running ``ubuntu-container``, and ``linux_shell_dangerous`` on the host. Here:

- ``linux_shell(command, timeout=30)`` runs ``bash -c command`` in a bubblewrap sandbox over the
  worker's read-only system (``sandbox.run_sandboxed``: no network, no secrets, limits, its own
  PID namespace). Unlike Windlass, ``timeout`` is honoured, capped by
  ``[llm_provider] code_tool_max_timeout`` (seconds, default 300).
- ``run_code(code, language="python")`` runs the code with the worker's Python interpreter (its
  virtualenv's packages, e.g. pandas, import) in the same sandbox, with the default timeout.
  Windlass ignores ``language``; here any language but Python is an error naming the argument.
- ``linux_shell_dangerous(command, timeout=300)`` runs ``bash -c`` without a sandbox (with the
  limits and an environment built from scratch), only when an admin sets
  ``[llm_provider] allow_unsandboxed_code = True``; otherwise it is refused.

All three work in the ``code`` folder of the run's scratch folder, so files persist between calls
of one run (and go when it ends). Like Windlass, they answer with the combined output, prefixed
``Exit code: N`` and a blank line when the exit code is not 0,
``(Command executed successfully with no output)`` when there is none, and ``Error: ...`` strings
instead of raising. The output handed back is cut at :data:`OUTPUT_LIMIT` bytes.

Where bubblewrap cannot run, ``linux_shell`` and ``run_code`` are unavailable (validate refuses
cascades naming them) unless ``allow_unsandboxed_code`` is set; they then run as plain limited
subprocesses and say so loudly through ``context.emit`` on every call.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from airflow_llm_provider.cascades.sandbox import (
    ALLOW_UNSANDBOXED_OPTION,
    DEFAULT_LIMITS,
    UNAVAILABLE_REASON,
    Isolation,
    Limits,
    SandboxError,
    SandboxResult,
    bubblewrap_available,
    python_executable,
    run_sandboxed,
)
from airflow_llm_provider.cascades.settings import option
from airflow_llm_provider.cascades.tools.builtin import BuiltinTool, ToolContext, ToolServices

LINUX_SHELL = "linux_shell"
RUN_CODE = "run_code"
LINUX_SHELL_DANGEROUS = "linux_shell_dangerous"

MAX_TIMEOUT_OPTION = "code_tool_max_timeout"
"""``[llm_provider] code_tool_max_timeout``: the most seconds one call may run, whatever its
``timeout`` argument says."""
DEFAULT_MAX_TIMEOUT = 300.0
RUN_CODE_TIMEOUT = 30.0
"""``run_code`` has no timeout argument; it gets ``linux_shell``'s default."""

OUTPUT_LIMIT = 64 * 1024
"""Bytes of output handed back to the model (the rest is cut, and the cut is said)."""

CODE_FOLDER = "code"
"""The working directory's name inside the run's scratch folder."""

# What one call may use besides its time; generous enough for pandas on a modest table.
TOOL_LIMITS = replace(DEFAULT_LIMITS, memory_bytes=1024 * 1024 * 1024, output_bytes=OUTPUT_LIMIT + 1)

NO_OUTPUT = "(Command executed successfully with no output)"

_DANGEROUS_REFUSED = (
    f"linux_shell_dangerous runs commands on the worker itself, without a sandbox; it is refused "
    f"unless an admin sets `{ALLOW_UNSANDBOXED_OPTION}` (dangerous)"
)
_UNSANDBOXED_WARNING = (
    "WARNING: {tool} is running model-written code WITHOUT a sandbox (bubblewrap cannot run here and "
    f"`{ALLOW_UNSANDBOXED_OPTION}` is set): it can read what the worker can read and reach the network."
)


def max_timeout() -> float:
    """``[llm_provider] code_tool_max_timeout`` (positive seconds), else :data:`DEFAULT_MAX_TIMEOUT`."""
    configured = (option(MAX_TIMEOUT_OPTION) or "").strip()
    try:
        seconds = float(configured)
    except ValueError:
        return DEFAULT_MAX_TIMEOUT
    return seconds if math.isfinite(seconds) and seconds > 0 else DEFAULT_MAX_TIMEOUT


def _services(services: ToolServices | None) -> ToolServices:
    return services if services is not None else ToolServices()


def sandboxed_unavailable(services: ToolServices | None) -> str | None:
    """Why ``linux_shell``/``run_code`` cannot run here: None with bubblewrap, or when an admin
    allows unsandboxed code."""
    if bubblewrap_available() or _services(services).allow_unsandboxed_code:
        return None
    return UNAVAILABLE_REASON


def dangerous_unavailable(services: ToolServices | None) -> str | None:
    """Why ``linux_shell_dangerous`` cannot run here: unless allowed, it never can."""
    return None if _services(services).allow_unsandboxed_code else _DANGEROUS_REFUSED


def _timeout(tool: str, value: Any) -> float | str:
    """The call's wall-clock seconds (capped), or an error naming the argument."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return f"Error: {tool}: `timeout` must be a number of seconds, not {str(value)[:40]!r}"
    if not math.isfinite(seconds) or seconds <= 0:
        return f"Error: {tool}: `timeout` must be a positive number of seconds, not {value!r}"
    return min(seconds, max_timeout())


def _text_argument(tool: str, name: str, value: Any) -> str | None:
    """An error naming the argument when ``value`` is not a non-empty string."""
    if not isinstance(value, str):
        return f"Error: {tool}: `{name}` must be a string, not {type(value).__name__}"
    if not value.strip():
        return f"Error: {tool}: `{name}` is empty"
    return None


def _command_seconds(tool: str, command: Any, timeout: Any) -> float | str:
    """The call's wall-clock seconds, or an error naming the bad argument (``command``, ``timeout``)."""
    return _text_argument(tool, "command", command) or _timeout(tool, timeout)


def _folder(context: ToolContext) -> Path:
    return context.session.folder / CODE_FOLDER


def _path() -> str:
    """``PATH`` inside: this process's virtualenv first (``python3`` then has its packages)."""
    path = "/usr/local/bin:/usr/bin:/bin"
    if sys.prefix != sys.base_prefix:
        path = f"{Path(python_executable()).parent}:{path}"
    return path


def _isolation(context: ToolContext, tool: str) -> Isolation | None:
    """``required`` with bubblewrap; ``best_effort`` (with a loud warning) when an admin allows
    unsandboxed code and bubblewrap cannot run; else None (refused)."""
    if bubblewrap_available():
        return "required"
    if context.services.allow_unsandboxed_code:
        context.emit(_UNSANDBOXED_WARNING.format(tool=tool))
        return "best_effort"
    return None


def format_result(result: SandboxResult, seconds: float) -> str:
    """Windlass's answer: the combined output, ``Exit code: N`` first when it is not 0."""
    output = result.stdout
    if len(output.encode("utf-8", errors="replace")) > OUTPUT_LIMIT:
        output = output.encode("utf-8", errors="replace")[:OUTPUT_LIMIT].decode("utf-8", errors="ignore")
        output += f"\n[output cut at {OUTPUT_LIMIT} bytes]"
    if result.timed_out:
        message = f"Error: Command timed out after {seconds:g} seconds"
        return f"{message}\n\n{output}" if output else message
    if result.returncode != 0:
        return f"Exit code: {result.returncode}\n\n{output}"
    return output if output else NO_OUTPUT


async def _execute(
    context: ToolContext, tool: str, argv: list[str], stdin: str, seconds: float, isolation: Isolation
) -> str:
    limits: Limits = replace(TOOL_LIMITS, wall_seconds=seconds, cpu_seconds=max(1, math.ceil(seconds)))
    try:
        result = await run_sandboxed(
            argv,
            workdir=_folder(context),
            stdin=stdin,
            env={"PATH": _path()},
            limits=limits,
            isolation=isolation,
            merge_stderr=True,
        )
    except SandboxError as error:
        return f"Error: {tool}: {error}"
    except OSError as error:  # e.g. the scratch folder cannot be created
        return f"Error: {tool}: {error}"
    return format_result(result, seconds)


def linux_shell_function(context: ToolContext) -> Any:
    async def linux_shell(command: str, timeout: int = 30) -> str:
        """Run a bash command in a sandboxed Linux shell and return its output (stdout and stderr
        together; "Exit code: N" first when it fails). The sandbox has the usual command-line tools
        and python3 with the worker's packages, but no network; the working directory keeps its
        files between calls of this run. `timeout`: seconds before the command is killed."""
        seconds = _command_seconds(LINUX_SHELL, command, timeout)
        if isinstance(seconds, str):
            return seconds
        isolation = _isolation(context, LINUX_SHELL)
        if isolation is None:
            return f"Error: {LINUX_SHELL}: {UNAVAILABLE_REASON}"
        argv = ["bash", "--noprofile", "--norc", "-c", command]
        return await _execute(context, LINUX_SHELL, argv, "", seconds, isolation)

    return linux_shell


_PYTHON_NAMES = ("python", "python3", "py")


def run_code_function(context: ToolContext) -> Any:
    async def run_code(code: str, language: str = "python") -> str:
        """Run a Python script in a sandbox and return what it prints (stdout and stderr together;
        "Exit code: N" first when it fails). Print the results you need. Installed packages such as
        pandas and numpy can be imported; there is no network; files written to the working
        directory are kept between calls of this run."""
        problem = _text_argument(RUN_CODE, "code", code)
        if problem:
            return problem
        if not isinstance(language, str) or language.strip().lower() not in _PYTHON_NAMES:
            return (
                f"Error: {RUN_CODE}: `language` {str(language)[:40]!r} is not supported: run_code runs "
                "Python only (use linux_shell for other programs)"
            )
        isolation = _isolation(context, RUN_CODE)
        if isolation is None:
            return f"Error: {RUN_CODE}: {UNAVAILABLE_REASON}"
        # The script comes on stdin, as Windlass's heredoc hands it to python3.
        argv = [python_executable(), "-"]
        seconds = min(RUN_CODE_TIMEOUT, max_timeout())
        return await _execute(context, RUN_CODE, argv, code, seconds, isolation)

    return run_code


def linux_shell_dangerous_function(context: ToolContext) -> Any:
    async def linux_shell_dangerous(command: str, timeout: int = 300) -> str:
        """Run a bash command directly on the worker, without a sandbox (only where an admin allows
        it), and return its output (stdout and stderr together; "Exit code: N" first when it
        fails). `timeout`: seconds before the command is killed."""
        if not context.services.allow_unsandboxed_code:
            return f"Error: {_DANGEROUS_REFUSED}"
        seconds = _command_seconds(LINUX_SHELL_DANGEROUS, command, timeout)
        if isinstance(seconds, str):
            return seconds
        context.emit(f"WARNING: linux_shell_dangerous is running a command on the worker: {command[:200]}")
        argv = ["bash", "--noprofile", "--norc", "-c", command]
        return await _execute(context, LINUX_SHELL_DANGEROUS, argv, "", seconds, "none")

    return linux_shell_dangerous


TOOLS = (
    BuiltinTool(
        LINUX_SHELL,
        make=linux_shell_function,
        description="Run a bash command in a sandboxed Linux shell (no network) and return its output.",
        unavailable=sandboxed_unavailable,
    ),
    BuiltinTool(
        RUN_CODE,
        make=run_code_function,
        description="Run a Python script in a sandbox (no network) and return what it prints.",
        unavailable=sandboxed_unavailable,
    ),
    BuiltinTool(
        LINUX_SHELL_DANGEROUS,
        make=linux_shell_dangerous_function,
        description="Run a bash command on the worker without a sandbox (only where an admin allows it).",
        unavailable=dangerous_unavailable,
    ),
)
