"""Run code out of process, with limits: :func:`run_sandboxed` runs any program that way, for the
built-in tools (model-written code: ``run_code``, ``linux_shell``; the author's: ``python_data`` and
friends) and for a cascade's inline validator code (``{python: ...}``, ``{bash: ...}``,
``{javascript: ...}``, :func:`run_validator_code`).

A cascade file is data an author hands to the scheduler; its inline code must not read the
worker's secrets, fill its disk or hang the task. So the code never runs in the worker's process:

- a child process with an environment built from scratch (``PATH``, ``LANG``, ``HOME``, ``TMPDIR``;
  nothing inherited, so no connection strings or API keys), in a fresh temporary directory that is
  removed afterwards;
- Python validators run as ``python -I -S`` with the base interpreter (isolated: no ``PYTHON*``
  variables, no site-packages, no user site), so only the standard library is importable;
- resource limits set in the child before the code runs: CPU seconds, address space (not for
  ``node``, whose heap is capped with ``--max-old-space-size`` instead), file size, process count
  (also a pids cgroup where this process may create one), no core files;
- a wall-clock timeout after which the whole process group is killed;
- the output read back is bounded;
- when bubblewrap works here, the child also runs in it (see :func:`run_sandboxed`: no network,
  read-only system, private ``/tmp``, secrets hidden, its own PID namespace); inline validators are
  the author's code (``isolation="best_effort"``), so without bubblewrap they run as a plain limited
  subprocess, which can still read world-readable files and open network connections.

The validators' protocol: the child reads one JSON object on stdin and the code sets ``result`` (Python,
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
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

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
    processes: int = 64
    """Processes (and threads) the sandboxed program may have at once (:func:`run_sandboxed`)."""


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


class SandboxUnavailable(SandboxError):
    """``isolation="required"`` was asked for and bubblewrap cannot run on this machine."""


Isolation = Literal["required", "best_effort", "none"]
"""``required``: bubblewrap or :class:`SandboxUnavailable`; ``best_effort``: bubblewrap when it
works, else a plain limited subprocess (for code as trusted as a DAG file); ``none``: always the
plain limited subprocess (``linux_shell_dangerous``, which an admin must allow)."""


@dataclass(frozen=True)
class SandboxResult:
    """What came back: the exit code, stdout and stderr (both cut at ``Limits.output_bytes``)."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


# Runs as ``python -I -S -c`` (after :func:`run_sandboxed` has set the limits): the request comes
# on stdin; the code runs with ``content`` and ``original_input`` in scope and sets ``result``.
_PYTHON_HARNESS = r"""
import json, sys
request = json.loads(sys.stdin.read())
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
    workdir = Path(tempfile.mkdtemp(prefix="llm-validator-"))
    try:
        request = {"code": code, "content": content, "original_input": original_input}
        env: dict[str, str] = {}
        stdin = ""
        if language == "python":
            argv = [_interpreter(), "-I", "-S", "-c", _PYTHON_HARNESS]
            stdin = json.dumps(request, default=str)
        elif language == "bash":
            argv = [_runtime("bash"), "--noprofile", "--norc", "-c", code]
            env = {"CONTENT": content, "ORIGINAL_INPUT": json.dumps(original_input)}
        else:
            limits = limits or default_limits()
            megabytes = max(32, limits.memory_bytes // (2 * 1024 * 1024))
            argv = [_runtime("node"), f"--max-old-space-size={megabytes}", "-e", _NODE_HARNESS]
            (workdir / _NODE_REQUEST).write_text(json.dumps(request, default=str))
        return await run_sandboxed(
            argv,
            workdir=workdir,
            stdin=stdin,
            env=env,
            limits=limits,
            isolation="best_effort",  # the cascade author's code, as trusted as a DAG file
            cap_address_space=language != "javascript",  # V8 reserves more than its heap
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


# --- Sandboxed programs: model-written code (run_code, linux_shell) and the polyglot data tools ---

ALLOW_UNSANDBOXED_OPTION = "[llm_provider] allow_unsandboxed_code = True"

UNAVAILABLE_REASON = (
    "model-written code runs only in a bubblewrap sandbox, and bubblewrap cannot run on this machine: "
    "install the Debian package `bubblewrap` (and allow unprivileged user namespaces), or, at your own "
    f"risk, set `{ALLOW_UNSANDBOXED_OPTION}` to run it as a plain limited subprocess (dangerous: the "
    "code can then read the worker's files and reach the network)"
)

_SCRATCH_PATH = "/usr/local/bin:/usr/bin:/bin"

# Runs in the sandbox as ``python -I -S -c``: set the limits, then become the program (the limits
# survive exec). Its arguments: the limits as JSON, then the program's argv.
_EXEC_LAUNCHER = r"""
import json, os, resource, sys
for name, value in json.loads(sys.argv[1]).items():
    # CPU: SIGXCPU at the soft limit, SIGKILL a second later if it is caught.
    resource.setrlimit(getattr(resource, name), (value, value + 1 if name == "RLIMIT_CPU" else value))
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as error:
    sys.stderr.write(f"cannot run {sys.argv[2]}: {error.strerror}\n")
    sys.exit(127)
"""

# What no sandboxed program may read even where the worker could: a root worker's sandbox is
# still the owner of root's files (it only lacks capabilities).
_HIDDEN_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/sudoers")
_HIDDEN_SYSTEM_DIRECTORIES = (
    "/etc/ssh",
    "/etc/ssl/private",
    "/var/log",
    "/var/backups",
    "/var/spool",
    "/var/mail",
    "/var/lib/private",
)


def python_executable() -> str:
    """The interpreter model-written Python runs with: this process's own, not resolved through
    symlinks, so a virtualenv keeps its site-packages (pandas, numpy import when installed)."""
    return sys.executable or _interpreter()


async def run_sandboxed(
    argv: list[str],
    *,
    workdir: Path,
    stdin: str = "",
    env: Mapping[str, str] | None = None,
    limits: Limits | None = None,
    isolation: Isolation = "required",
    merge_stderr: bool = False,
    cap_address_space: bool = True,
) -> SandboxResult:
    """Run ``argv`` in ``workdir`` (created if missing) with ``stdin``, in a sandbox, and return what
    came back. A failing, crashing or timed-out program is a :class:`SandboxResult`.

    The program gets an environment built from scratch (``PATH``, ``LANG``, ``HOME``, ``TMPDIR``, one
    thread for OpenMP/OpenBLAS/MKL, then ``env``), the :class:`Limits` (CPU, address space, file
    size, process count, wall clock, output read back), its own process group, killed at the
    timeout with everything it started.

    With bubblewrap (``isolation="required"`` insists on it and raises :class:`SandboxUnavailable`
    otherwise): no network, a read-only system with a private ``/tmp`` and ``/run`` (no Unix sockets
    of the host's servers), the worker's home, ``$AIRFLOW_HOME`` and the phase cache hidden behind
    empty folders, ``workdir`` the only writable place, its own PID namespace, no capabilities and
    no further user namespaces. ``best_effort`` without bubblewrap, and ``none``: a plain subprocess
    with the same environment and limits (it can read what the worker can and reach the network).

    ``merge_stderr``: stderr goes into ``stdout`` (interleaved as written) and ``stderr`` is empty.
    ``cap_address_space=False``: no ``RLIMIT_AS`` (for ``node``, whose V8 reserves far more address
    space than it uses; cap its heap with ``--max-old-space-size`` instead).
    Raises :class:`SandboxError` when ``argv`` is empty."""
    if not argv:
        raise SandboxError("run_sandboxed needs a program to run (argv is empty)")
    sandboxed = isolation != "none" and bubblewrap_available()
    if not sandboxed and isolation == "required":
        raise SandboxUnavailable(UNAVAILABLE_REASON)
    limits = limits or default_limits()
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    child_env = {"PATH": _SCRATCH_PATH, "LANG": "C.UTF-8", "HOME": str(workdir), "TMPDIR": "/tmp"}
    # Numeric libraries start a thread per core by default; threads count against the process
    # limit, and on a many-core worker numpy would fail to start.
    child_env |= {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    if not sandboxed:
        child_env["TMPDIR"] = str(workdir)  # no private /tmp: keep its files in its own folder
    child_env.update(env or {})
    rlimits: dict[str, int] = {
        "RLIMIT_CPU": limits.cpu_seconds,
        "RLIMIT_FSIZE": limits.file_bytes,
        "RLIMIT_CORE": 0,
    }
    if cap_address_space:
        rlimits["RLIMIT_AS"] = limits.memory_bytes
    if sandboxed:
        # Counted per user inside the sandbox's own user namespace; outside one it would count
        # every process of the worker's user. Root ignores it: the pids cgroup covers that case.
        rlimits["RLIMIT_NPROC"] = limits.processes
    program = [_interpreter(), "-I", "-S", "-c", _EXEC_LAUNCHER, json.dumps(rlimits), *argv]
    prefix = _sandbox_arguments(workdir) if sandboxed else []
    cgroup = _PidsCgroup.create(limits.processes + 2)  # + bubblewrap's monitor and init
    if cgroup is not None:
        # The shell joins the cgroup, then becomes bubblewrap: every descendant is counted.
        prefix = ["/bin/sh", "-c", 'echo $$ > "$0" || exit 125; exec "$@"', str(cgroup.procs), *prefix]
    outputs = Path(tempfile.mkdtemp(prefix="llm-sandbox-out-"))
    try:
        return await _run_program(prefix + program, stdin, child_env, workdir, limits, outputs, merge_stderr)
    finally:
        if cgroup is not None:
            await asyncio.to_thread(cgroup.close)
        shutil.rmtree(outputs, ignore_errors=True)


async def _run_program(
    argv: list[str],
    stdin: str,
    env: dict[str, str],
    workdir: Path,
    limits: Limits,
    outputs: Path,
    merge_stderr: bool,
) -> SandboxResult:
    # Output goes to files outside the sandbox, bounded by RLIMIT_FSIZE: a flood cannot fill the
    # worker's memory, and the program cannot read or replace them.
    out_path, err_path = outputs / "stdout", outputs / "stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out if merge_stderr else err,
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
            # Also after a normal exit: without bubblewrap, background children may live on.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            if process.returncode is None:
                await process.wait()
    return SandboxResult(
        returncode=process.returncode if process.returncode is not None else -1,
        stdout=_read_bounded(out_path, limits.output_bytes),
        stderr=_read_bounded(err_path, limits.output_bytes),
        timed_out=timed_out,
    )


def _hidden_directories() -> list[Path]:
    """Folders a sandboxed program must not see: the worker's home, ``$AIRFLOW_HOME`` and the
    phase cache's folder (all may hold credentials, connections or other runs' answers)."""
    candidates: list[str] = [os.environ.get("HOME", ""), str(Path("~").expanduser())]
    with contextlib.suppress(ImportError, KeyError):
        import pwd

        candidates.append(pwd.getpwuid(os.getuid()).pw_dir)
    airflow_home = os.environ.get("AIRFLOW_HOME") or str(Path("~/airflow").expanduser())
    candidates += [airflow_home, os.environ.get("AIRFLOW_LLM_CACHE_DIR", "")]
    found: list[Path] = []
    for candidate in candidates:
        if not candidate:
            continue
        path = Path(candidate).resolve()
        if path != Path("/") and path.is_dir() and path not in found:
            found.append(path)
    # A folder inside another hidden one is hidden with it.
    return [path for path in found if not any(other in path.parents for other in found)]


def _python_directories() -> list[Path]:
    """Where the interpreters the sandbox runs live (this process's virtualenv and the base
    installation it points to), to show again read-only when they sit under a hidden folder."""
    places = [Path(sys.prefix), Path(sys.base_prefix), Path(python_executable()).parent]
    places += [place.resolve() for place in places] + [Path(_interpreter()).parent.parent]
    unique: list[Path] = []
    for place in places:
        if place.is_dir() and place not in unique:
            unique.append(place)
    return unique


def _sandbox_arguments(workdir: Path) -> list[str]:
    bwrap = shutil.which("bwrap") or "bwrap"
    hidden = [*_hidden_directories(), Path("/tmp"), Path("/run")]
    hidden += [
        Path(name)
        for name in ("/var/run", *_HIDDEN_SYSTEM_DIRECTORIES)
        if Path(name).is_dir() and not Path(name).is_symlink()
    ]
    arguments = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for directory in hidden:
        # Empty folders over them; /run also holds servers' Unix sockets (PostgreSQL's), which a
        # read-only mount does not stop a client from connecting to.
        arguments += ["--tmpfs", str(directory)]
    # Airflow's configuration may live outside $AIRFLOW_HOME (and hold the metadata database's URL).
    for name in (*_HIDDEN_FILES, os.environ.get("AIRFLOW_CONFIG", "")):
        if name and os.path.isfile(name):
            arguments += ["--ro-bind", "/dev/null", os.path.realpath(name)]
    for place in _python_directories():
        if any(place == directory or directory in place.parents for directory in hidden):
            arguments += ["--ro-bind", str(place), str(place)]
    arguments += [
        "--bind",
        str(workdir),
        str(workdir),
        "--chdir",
        str(workdir),
        "--unshare-all",  # no network; own PID, IPC, UTS, cgroup namespaces
        "--unshare-user",
        "--disable-userns",  # no nested user namespace to regain capabilities in
        "--cap-drop",
        "ALL",  # a root worker's sandbox could otherwise unmount the folders hiding secrets
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
    ]
    return arguments


class _PidsCgroup:
    """A pids cgroup for one run (cgroup v1 or v2), when this process may create one: it bounds
    the processes of a root worker's sandbox, which RLIMIT_NPROC does not, and lets every
    leftover process be killed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.procs = path / "cgroup.procs"

    @classmethod
    def create(cls, limit: int) -> _PidsCgroup | None:
        for parent in _pids_cgroup_parents():
            path = parent / f"airflow-llm-sandbox-{os.getpid()}-{os.urandom(4).hex()}"
            try:
                path.mkdir()
            except OSError:
                continue
            try:
                (path / "pids.max").write_text(str(limit))
            except OSError:
                with contextlib.suppress(OSError):
                    path.rmdir()
                continue
            return cls(path)
        return None

    def close(self) -> None:
        """Kill what is left in the cgroup and remove it."""
        for _ in range(50):
            try:
                pids = [int(line) for line in self.procs.read_text().split()]
            except (OSError, ValueError):
                break
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        for _ in range(250):  # dying processes leave the cgroup within moments
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def _pids_cgroup_parents() -> list[Path]:
    """This process's own pids cgroup folders (v1, then v2) where a child cgroup may go."""
    root = Path("/sys/fs/cgroup")
    parents: list[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return parents
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, relative = parts
        relative = relative.lstrip("/")
        if "pids" in controllers.split(","):
            parents.append(root / "pids" / relative)
        elif controllers == "":
            for base in (root, root / "unified"):
                if (base / "cgroup.controllers").exists():
                    parents.append(base / relative)
                    break
    return [parent for parent in parents if parent.is_dir() and os.access(parent, os.W_OK)]
