"""Run a cascade's inline validator code (``{python: ...}``, ``{bash: ...}``, ``{javascript: ...}``)
out of process, with limits.

A cascade file is data an author hands to the scheduler; its inline code must not read the
worker's secrets, fill its disk or hang the task. So the code never runs in the worker's process:

- a child process with a minimal environment (``PATH``, ``LANG``, ``HOME``; nothing inherited, so
  no connection strings or API keys), in a fresh temporary directory that is removed afterwards;
- Python runs as ``python -I -S`` (isolated: no ``PYTHON*`` variables, no site-packages, no user
  site), so only the standard library is importable;
- resource limits set in the child before the code runs: CPU seconds, address space (not for
  ``node``, whose heap is capped with ``--max-old-space-size`` instead), file size, no core files;
- a wall-clock timeout after which the whole process group is killed;
- the output read back is bounded;
- when ``bwrap`` (bubblewrap) is on ``PATH`` and works, the child also runs in it: read-only root,
  no network, private ``/tmp``, its own PID namespace.

Without bubblewrap the code can still read world-readable files and open network connections;
the limits above are what stands between it and the worker.

The protocol: the child reads one JSON object on stdin and the code sets ``result`` (Python,
JavaScript) or prints it (bash); the verdict comes back as JSON on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

LANGUAGES = ("python", "bash", "javascript")
"""Inline validator languages this module runs."""


@dataclass(frozen=True)
class Limits:
    """What one validator run may use."""

    wall_seconds: float = 20.0
    cpu_seconds: int = 10
    memory_bytes: int = 512 * 1024 * 1024
    file_bytes: int = 16 * 1024 * 1024
    output_bytes: int = 1024 * 1024


DEFAULT_LIMITS = Limits()

TIMEOUT_ENV = "AIRFLOW_LLM_VALIDATOR_TIMEOUT"
"""Seconds one inline validator may run (wall clock; its CPU limit is at most this)."""


def default_limits() -> Limits:
    """:data:`DEFAULT_LIMITS`, with the wall-clock and CPU time from ``AIRFLOW_LLM_VALIDATOR_TIMEOUT``."""
    configured = os.environ.get(TIMEOUT_ENV, "").strip()
    if not configured:
        return DEFAULT_LIMITS
    try:
        seconds = float(configured)
    except ValueError:
        return DEFAULT_LIMITS
    if seconds <= 0:
        return DEFAULT_LIMITS
    return replace(DEFAULT_LIMITS, wall_seconds=seconds, cpu_seconds=max(1, math.ceil(seconds)))


class SandboxError(RuntimeError):
    """The code could not be run at all (a missing runtime), as opposed to code that failed."""


@dataclass(frozen=True)
class SandboxResult:
    """What came back: the exit code, stdout and stderr (both cut at ``Limits.output_bytes``)."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


# Runs in the child as ``python -I -S -c``: apply the limits, then run the Python code in this
# process, or replace this process with bash/node (which keep the limits across exec).
_LAUNCHER = r"""
import json, os, resource, sys
request = json.loads(sys.stdin.read())
for name, value in request["limits"].items():
    # CPU: SIGXCPU at the soft limit, SIGKILL a second later if it is caught.
    resource.setrlimit(getattr(resource, name), (value, value + 1 if name == "RLIMIT_CPU" else value))
language = request["language"]
if language == "python":
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    namespace = {
        "__name__": "__validator__",
        "content": request["content"],
        "original_input": request["original_input"],
    }
    exec(compile(request["code"], "<validator>", "exec"), namespace)
    sys.stdout = real_stdout
    json.dump({"result": namespace.get("result")}, real_stdout, default=str)
else:
    argv = request["argv"]
    os.execve(argv[0], argv, request["env"])
"""

# Runs in node: ``content`` and ``original_input`` are in scope; the code sets ``result``.
_NODE_HARNESS = r"""
const request = JSON.parse(require("fs").readFileSync(".request.json", "utf8"));
const run = new Function("content", "original_input",
  request.code + "\n;return (typeof result === 'undefined') ? undefined : result;");
const value = run(request.content, request.original_input);
process.stdout.write(JSON.stringify({ result: value === undefined ? null : value }));
"""
_NODE_REQUEST = ".request.json"


async def run_validator_code(
    language: str,
    code: str,
    content: str,
    original_input: Any,
    limits: Limits | None = None,
) -> SandboxResult:
    """Run ``code`` in ``language`` with ``content`` and ``original_input`` in the sandbox.

    Raises :class:`SandboxError` when the language's runtime is missing; a failing, crashing or
    timed-out program is a :class:`SandboxResult` (the caller decides what it means)."""
    if language not in LANGUAGES:
        raise SandboxError(f"inline `{language}` code is not supported (supported: {', '.join(LANGUAGES)})")
    limits = limits or default_limits()
    workdir = Path(tempfile.mkdtemp(prefix="llm-validator-"))
    try:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(workdir)}
        rlimits: dict[str, int] = {
            "RLIMIT_CPU": limits.cpu_seconds,
            "RLIMIT_FSIZE": limits.file_bytes,
            "RLIMIT_CORE": 0,
        }
        request: dict[str, Any] = {"language": language, "limits": rlimits}
        if language == "python":
            rlimits["RLIMIT_AS"] = limits.memory_bytes
            request |= {"code": code, "content": content, "original_input": original_input}
        elif language == "bash":
            rlimits["RLIMIT_AS"] = limits.memory_bytes
            bash = _runtime("bash")
            request["argv"] = [bash, "--noprofile", "--norc", "-c", code]
            request["env"] = env | {"CONTENT": content, "ORIGINAL_INPUT": json.dumps(original_input)}
        else:
            node = _runtime("node")
            megabytes = max(32, limits.memory_bytes // (2 * 1024 * 1024))
            request["argv"] = [node, f"--max-old-space-size={megabytes}", "-e", _NODE_HARNESS]
            request["env"] = env
            # node reads its request from a file: the launcher has consumed stdin before exec.
            (workdir / _NODE_REQUEST).write_text(
                json.dumps({"code": code, "content": content, "original_input": original_input}, default=str)
            )
        return await _run(
            [_interpreter(), "-I", "-S", "-c", _LAUNCHER],
            json.dumps(request, default=str),
            env,
            workdir,
            limits,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _interpreter() -> str:
    """The base Python, not a virtualenv's: the child needs the standard library only, and a
    virtualenv (e.g. a checkout under /tmp) may be hidden by the sandbox's private /tmp."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _runtime(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SandboxError(f"inline validators in this language need `{name}`, which is not on PATH here")
    return found


async def _run(
    argv: list[str], stdin: str, env: dict[str, str], workdir: Path, limits: Limits
) -> SandboxResult:
    argv = _bwrap(workdir) + argv
    # Output goes to files bounded by RLIMIT_FSIZE, so a flood cannot fill the worker's memory.
    out_path, err_path = workdir / ".stdout", workdir / ".stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
            env=env,
            cwd=workdir,
            start_new_session=True,  # its own process group: a timeout kills children too
        )
        timed_out = False
        try:
            await asyncio.wait_for(process.communicate(stdin.encode()), limits.wall_seconds)
        except TimeoutError:
            timed_out = True
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
    return SandboxResult(
        returncode=process.returncode if process.returncode is not None else -1,
        stdout=_read_bounded(out_path, limits.output_bytes),
        stderr=_read_bounded(err_path, limits.output_bytes),
        timed_out=timed_out,
    )


def _read_bounded(path: Path, limit: int) -> str:
    with path.open("rb") as handle:
        return handle.read(limit).decode("utf-8", errors="replace")


_BWRAP_WORKS: bool | None = None


def bubblewrap_available() -> bool:
    """Whether ``bwrap`` is on PATH and can create a sandbox here (containers often forbid the
    user namespaces it needs); probed once per process."""
    global _BWRAP_WORKS
    if _BWRAP_WORKS is None:
        bwrap = shutil.which("bwrap")
        _BWRAP_WORKS = False
        if bwrap is not None:
            try:
                probe = subprocess.run(
                    [bwrap, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
                _BWRAP_WORKS = probe.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                _BWRAP_WORKS = False
    return _BWRAP_WORKS


def _visible_again(prefix: Path) -> list[str]:
    """Re-expose (read-only) the Python installation if it lives under /tmp, which the sandbox
    replaces with an empty folder."""
    resolved = prefix.resolve()
    if resolved == Path("/tmp") or Path("/tmp") in resolved.parents:
        return ["--ro-bind", str(resolved), str(resolved)]
    return []


def _bwrap(workdir: Path) -> list[str]:
    if not bubblewrap_available():
        return []
    return [
        "bwrap",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        *_visible_again(Path(sys.base_prefix)),
        "--bind",
        str(workdir),
        str(workdir),
        "--chdir",
        str(workdir),
        "--unshare-all",  # no network, own PID/IPC/UTS namespaces
        "--die-with-parent",
        "--new-session",
    ]
