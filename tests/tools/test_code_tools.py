"""The code family (tools/code.py: ``linux_shell``, ``run_code``, ``linux_shell_dangerous``) and the
sandbox under it (``sandbox.run_sandboxed``), against the real bubblewrap, real subprocesses, the
machine's PostgreSQL and the scripted OpenAI-protocol server. Every escape is attempted for real and
must fail."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.loader import check_cascade
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.cascades.sandbox import (
    Limits,
    SandboxUnavailable,
    bubblewrap_available,
    python_executable,
    run_sandboxed,
)
from airflow_llm_provider.cascades.tools import code as code_tools
from airflow_llm_provider.cascades.tools.builtin import (
    RunSession,
    ToolContext,
    ToolServices,
    builtin_tool,
    unavailable_reason,
)
from airflow_llm_provider.testing.openai_server import text, tool_call
from tests.support.models import server_models

REPO = Path(__file__).resolve().parents[2]

# CI installs bubblewrap: there a sandbox that cannot run fails these tests instead of skipping them.
needs_bwrap = pytest.mark.skipif(
    not bubblewrap_available() and os.environ.get("CI") != "true", reason="bwrap cannot sandbox here"
)


class Calls:
    """A run's scratch session and what the tools emitted."""

    def __init__(self, services: ToolServices, deterministic: bool = False) -> None:
        self.session = RunSession(uuid.uuid4().hex)
        self.emitted: list[str] = []

        async def no_children(*args, **kwargs):
            raise AssertionError("the code tools run no sub-cascade")

        self.context = ToolContext(
            phase_name="p",
            cascade_id="c",
            session=self.session,
            state={},
            outputs={},
            input={},
            base_dir=None,
            services=services,
            emit=self.emitted.append,
            run_cascade=no_children,
            start_background=lambda coroutine: coroutine.close(),  # the code tools start none
            deterministic=deterministic,
        )

    def tool(self, name: str):
        tool = builtin_tool(name)
        assert tool is not None, name
        return tool.make(self.context)

    def call(self, name: str, **arguments) -> str:
        return asyncio.run(self.tool(name)(**arguments))


@pytest.fixture
def calls() -> Iterator[Calls]:
    made = Calls(ToolServices(allow_unsandboxed_code=False))
    yield made
    made.session.close()


@pytest.fixture
def outside(tmp_path_factory) -> Iterator[Path]:
    """A folder on the host that the sandbox's private /tmp does not cover (so hiding it, or
    failing to write into it, is the sandbox's doing)."""
    folder = Path("/var/tmp") / f"alp-code-tools-{uuid.uuid4().hex[:10]}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def leftover_processes(marker: str) -> list[int]:
    """Processes on the machine whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in command:
            found.append(int(entry.name))
    return found


# --- Windlass's answers -------------------------------------------------------------------------


@needs_bwrap
def test_linux_shell_answers_like_windlass(calls):
    assert calls.call("linux_shell", command="echo out; echo err >&2") == "out\nerr\n"
    assert calls.call("linux_shell", command="echo failing; exit 3") == "Exit code: 3\n\nfailing\n"
    assert calls.call("linux_shell", command="true") == "(Command executed successfully with no output)"


@needs_bwrap
def test_files_persist_between_calls_in_the_run_code_folder(calls):
    assert calls.call("linux_shell", command="echo kept > notes.txt; pwd").strip().endswith("/code")
    assert calls.call("run_code", code="print(open('notes.txt').read().strip() * 2)") == "keptkept\n"
    assert (calls.session.folder / "code" / "notes.txt").read_text() == "kept\n"


@needs_bwrap
def test_run_code_uses_the_workers_python_with_its_packages(calls):
    pytest.importorskip("pandas")
    answer = calls.call(
        "run_code",
        code="import pandas as pd\nframe = pd.DataFrame({'a': [1, 2, 3]})\nprint(frame['a'].sum())",
    )
    assert answer == "6\n"
    failing = calls.call("run_code", code="raise ValueError('bad value')")
    assert failing.startswith("Exit code: 1\n\n") and "ValueError: bad value" in failing


@needs_bwrap
def test_python3_in_the_shell_is_the_workers_interpreter(calls):
    answer = calls.call("linux_shell", command="python3 -c 'import sys; print(sys.prefix)'")
    import sys

    assert answer.strip() == sys.prefix


def test_bad_arguments_are_errors_naming_the_tool_and_argument(calls):
    assert calls.call("linux_shell", command=42).startswith("Error: linux_shell: `command` must be a string")
    assert calls.call("linux_shell", command="  ") == "Error: linux_shell: `command` is empty"
    assert calls.call("linux_shell", command="true", timeout="soon").startswith(
        "Error: linux_shell: `timeout` must be a number"
    )
    assert "positive" in calls.call("linux_shell", command="true", timeout=-1)
    refused = calls.call("run_code", code="console.log(1)", language="javascript")
    assert refused.startswith("Error: run_code: `language` 'javascript' is not supported")
    assert calls.call("run_code", code=None).startswith("Error: run_code: `code` must be a string")


# --- escapes that must fail ---------------------------------------------------------------------


@needs_bwrap
def test_no_network_postgres_is_unreachable_by_tcp_and_unix_socket(calls, postgres):
    # Reachable from the worker itself: the refusal below is the sandbox's doing.
    socket.create_connection((postgres.host, postgres.port), timeout=5).close()
    code = (
        "import socket\n"
        f"for target in [({postgres.host!r}, {postgres.port}), '/var/run/postgresql/.s.PGSQL.5432',"
        " '/run/postgresql/.s.PGSQL.5432', '/tmp/.s.PGSQL.5432']:\n"
        "    family = socket.AF_UNIX if isinstance(target, str) else socket.AF_INET\n"
        "    try:\n"
        "        socket.socket(family).connect(target)\n"
        "        print('CONNECTED', target)\n"
        "    except OSError as error:\n"
        "        print('refused', target, error.errno)\n"
    )
    answer = calls.call("run_code", code=code)
    assert "CONNECTED" not in answer
    assert answer.count("refused") == 4
    assert "(Errno 111)" not in answer and "refused ('127.0.0.1', 5432) 111" in answer.replace(
        f"'{postgres.host}'", "'127.0.0.1'"
    ).replace(f", {postgres.port})", ", 5432)")


@needs_bwrap
def test_airflow_home_cache_and_home_are_hidden(calls, outside, monkeypatch):
    places = {"AIRFLOW_HOME": "airflow", "AIRFLOW_LLM_CACHE_DIR": "cache", "HOME": "home"}
    for variable, name in places.items():
        folder = outside / name
        folder.mkdir()
        (folder / "secret.txt").write_text(f"TOPSECRET-{name}")
        monkeypatch.setenv(variable, str(folder))
    config = outside / "airflow.cfg"
    config.write_text("sql_alchemy_conn = postgresql://TOPSECRET-config")
    monkeypatch.setenv("AIRFLOW_CONFIG", str(config))
    command = f"cat {config}; cat {outside}/*/secret.txt; ls -A {outside}/airflow {outside}/home; echo listed"
    answer = calls.call("linux_shell", command=command)
    assert "TOPSECRET" not in answer
    assert f"cat: {config}: Permission denied" in answer
    assert "secret.txt': No such file or directory" in answer
    # The folders are there, empty.
    assert f"{outside}/airflow:\n\n{outside}/home:\nlisted\n" in answer
    # The worker's own (real) home and Airflow home too, wherever they are.
    real_home = Path(os.path.expanduser("~root"))
    assert "No such file" in calls.call("linux_shell", command=f"ls {real_home}/.bashrc")


@needs_bwrap
def test_files_only_root_may_read_are_hidden(calls):
    # A root worker's sandbox lacks capabilities but still owns root's files: they are covered.
    answer = calls.call(
        "linux_shell", command="cat /etc/shadow; ls -A /var/log | wc -l; ls -A /etc/ssh | wc -l"
    )
    assert "root:" not in answer
    assert answer.endswith("\n0\n0\n"), answer
    if os.geteuid() == 0:
        assert "root:" in Path("/etc/shadow").read_text()  # readable here, not in there


@needs_bwrap
def test_the_workers_environment_is_not_inherited(calls, monkeypatch):
    monkeypatch.setenv("ALP_TEST_DB_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("PYTHONPATH", "/nowhere-on-purpose")
    answer = calls.call("linux_shell", command="env; cat /proc/1/environ | tr '\\0' '\\n'")
    assert "hunter2" not in answer and "ALP_TEST_DB_PASSWORD" not in answer
    assert "nowhere-on-purpose" not in answer
    assert "PATH=" in answer and "HOME=" in answer
    leaked = calls.call("run_code", code="import os; print(sorted(os.environ))")
    assert "ALP_TEST_DB_PASSWORD" not in leaked


@needs_bwrap
def test_writing_outside_the_scratch_folder_fails(calls, outside):
    marker = f"alp-escape-{uuid.uuid4().hex[:8]}"
    targets = [Path("/etc") / marker, Path("/tmp") / marker, REPO / marker, outside / marker]
    command = "; ".join(f"echo x > {target}" for target in targets) + "; echo done"
    answer = calls.call("linux_shell", command=command)
    # /etc, the repo and /var/tmp are read-only; a checkout under /tmp (as in CI) sits in the
    # sandbox's own empty /tmp instead, where its folder does not exist.
    read_only = 2 if REPO.resolve().is_relative_to("/tmp") else 3
    assert answer.count("Read-only file system") == read_only, answer
    assert answer.rstrip().endswith("done")
    for target in targets:
        assert not target.exists(), target
    # /tmp inside is the sandbox's own, gone with the call.
    assert calls.call("linux_shell", command=f"ls /tmp/{marker}").startswith("Exit code: 2")


@needs_bwrap
def test_a_fork_bomb_is_bounded_and_the_worker_is_fine(calls):
    counting = (
        "import os, time\n"
        "forked = 0\n"
        "try:\n"
        "    while forked < 5000:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        forked += 1\n"
        "except OSError as error:\n"
        "    print('stopped after', forked, 'errno', error.errno)\n"
    )
    answer = calls.call("run_code", code=counting)
    assert answer.startswith("stopped after"), answer
    assert int(answer.split()[2]) < code_tools.TOOL_LIMITS.processes + 5

    started = time.monotonic()
    bomb = calls.call(
        "linux_shell", command="bomb() { bomb | bomb & }; bomb; sleep 3; echo still here", timeout=8
    )
    assert time.monotonic() - started < 20
    assert "still here" in bomb or bomb.startswith("Error: Command timed out")
    # The worker can still start processes, and no sandbox cgroup is left behind.
    assert subprocess.run(["true"], check=False).returncode == 0
    pids_root = Path("/sys/fs/cgroup/pids")
    if pids_root.is_dir():
        assert not list(pids_root.rglob(f"airflow-llm-sandbox-{os.getpid()}-*"))


@needs_bwrap
def test_a_timeout_kills_the_command_and_its_children(calls):
    marker = f"{uuid.uuid4().int % 1000}.{uuid.uuid4().int % 1000}7"
    started = time.monotonic()
    answer = calls.call("linux_shell", command=f"echo started; sleep 1{marker} & sleep 2{marker}", timeout=1)
    assert time.monotonic() - started < 10
    assert answer.startswith("Error: Command timed out after 1 seconds")
    assert "started" in answer
    time.sleep(0.2)
    assert leftover_processes(marker) == []


@needs_bwrap
def test_the_timeout_is_capped_by_the_configured_maximum(calls, monkeypatch):
    monkeypatch.setenv("AIRFLOW__LLM_PROVIDER__CODE_TOOL_MAX_TIMEOUT", "1")
    started = time.monotonic()
    answer = calls.call("linux_shell", command="sleep 30", timeout=600)
    assert answer == "Error: Command timed out after 1 seconds"
    assert time.monotonic() - started < 10


@needs_bwrap
def test_huge_output_is_bounded(calls):
    started = time.monotonic()
    answer = calls.call("linux_shell", command="yes 0123456789abcdef", timeout=20)
    assert time.monotonic() - started < 15
    assert len(answer.encode()) < code_tools.OUTPUT_LIMIT + 200
    assert f"[output cut at {code_tools.OUTPUT_LIMIT} bytes]" in answer
    printed = calls.call("run_code", code="print('x' * 50_000_000)")
    assert len(printed.encode()) < code_tools.OUTPUT_LIMIT + 200 and "output cut" in printed


@needs_bwrap
def test_memory_and_file_size_limits_hold(calls):
    memory = calls.call("run_code", code="block = bytearray(4 * 1024 ** 3)\nprint('allocated')")
    assert "MemoryError" in memory and "allocated" not in memory
    big = calls.call("linux_shell", command="head -c 100000000 /dev/zero > big.bin; ls -l big.bin")
    assert "File too large" in big
    assert (calls.session.folder / "code" / "big.bin").stat().st_size <= code_tools.TOOL_LIMITS.file_bytes


@needs_bwrap
def test_the_sandbox_has_its_own_pid_namespace_and_no_capabilities(calls):
    answer = calls.call("linux_shell", command="ls /proc | grep -c '^[0-9]'; grep CapEff /proc/self/status")
    count, caps = answer.split("\n")[:2]
    assert int(count) < 10  # only the sandbox's own processes
    assert caps.split()[-1] == "0000000000000000"
    unmount = calls.call("linux_shell", command="umount /tmp && echo UNMOUNTED")
    assert "UNMOUNTED" not in unmount


# --- the API the polyglot data tools use --------------------------------------------------------


@needs_bwrap
def test_run_sandboxed_keeps_the_session_folder_writable(tmp_path):
    workdir = tmp_path / "session" / "python_data"
    result = asyncio.run(
        run_sandboxed(
            [python_executable(), "-c", "import sys; open('out.json', 'w').write(sys.stdin.read())"],
            workdir=workdir,
            stdin='{"rows": 2}',
            env={"DATA_NAME": "x"},
            limits=Limits(wall_seconds=20),
        )
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((workdir / "out.json").read_text()) == {"rows": 2}


def test_without_bubblewrap_required_is_refused_and_best_effort_runs(tmp_path, monkeypatch):
    from airflow_llm_provider.cascades import sandbox

    monkeypatch.setattr(sandbox, "_BWRAP_WORKS", False)  # a machine where bwrap cannot run
    with pytest.raises(SandboxUnavailable) as refused:
        asyncio.run(run_sandboxed(["true"], workdir=tmp_path))
    assert "bubblewrap" in str(refused.value) and "allow_unsandboxed_code = True" in str(refused.value)
    monkeypatch.setenv("ALP_TEST_DB_PASSWORD", "hunter2")
    result = asyncio.run(
        run_sandboxed(
            ["sh", "-c", "env; sleep 30"],
            workdir=tmp_path,
            isolation="best_effort",
            limits=Limits(wall_seconds=1),
        )
    )
    assert result.timed_out and "hunter2" not in result.stdout and "PATH=" in result.stdout

    assert code_tools.sandboxed_unavailable(ToolServices(allow_unsandboxed_code=False)) is not None
    assert "bubblewrap" in (unavailable_reason("run_code", ToolServices(allow_unsandboxed_code=False)) or "")
    assert code_tools.sandboxed_unavailable(ToolServices(allow_unsandboxed_code=True)) is None
    refused_calls = Calls(ToolServices(allow_unsandboxed_code=False))
    assert refused_calls.call("run_code", code="print(1)").startswith("Error: run_code: model-written code")
    allowed = Calls(ToolServices(allow_unsandboxed_code=True))
    try:
        assert allowed.call("run_code", code="print(6 * 7)") == "42\n"
        assert any("WITHOUT a sandbox" in line for line in allowed.emitted)
    finally:
        allowed.session.close()


# --- linux_shell_dangerous ----------------------------------------------------------------------


def test_linux_shell_dangerous_is_refused_unless_allowed(calls):
    reason = code_tools.dangerous_unavailable(ToolServices(allow_unsandboxed_code=False))
    assert reason is not None and "allow_unsandboxed_code = True" in reason
    assert calls.call("linux_shell_dangerous", command="echo hi").startswith(
        "Error: linux_shell_dangerous runs commands on the worker itself"
    )


def test_linux_shell_dangerous_runs_on_the_worker_when_allowed(outside, monkeypatch):
    (outside / "host.txt").write_text("host file")
    monkeypatch.setenv("ALP_TEST_DB_PASSWORD", "hunter2")
    allowed = Calls(ToolServices(allow_unsandboxed_code=True))
    try:
        assert code_tools.dangerous_unavailable(allowed.context.services) is None
        answer = allowed.call("linux_shell_dangerous", command=f"cat {outside}/host.txt; env")
        assert answer.startswith("host file")  # no sandbox: the host's files
        assert "hunter2" not in answer  # still no inherited secrets
        assert allowed.emitted and "linux_shell_dangerous" in allowed.emitted[0]
        timed = allowed.call("linux_shell_dangerous", command="sleep 30", timeout=1)
        assert timed == "Error: Command timed out after 1 seconds"
    finally:
        allowed.session.close()


# --- cascades end to end ------------------------------------------------------------------------


@needs_bwrap
def test_a_model_calls_run_code_through_tackle(llm_server):
    spec = load_cascade(
        {
            "cascade_id": "code_demo",
            "phases": [{"name": "compute", "instructions": "Compute it.", "tackle": ["run_code"]}],
        }
    )
    llm_server.script(
        tool_call("run_code", {"code": "import os\nprint(sum(range(10)), 'ALP' in ''.join(os.environ))"}),
        text("the sum is 45"),
    )
    result = run_cascade(spec, {}, RunOptions(model_factory=server_models(llm_server)))
    assert result.status == "success", result.error
    first, after_tool = llm_server.requests
    assert first.tool_names == ["run_code"]
    schema = first.body["tools"][0]["function"]["parameters"]
    assert schema["required"] == ["code"] and "language" in schema["properties"]
    assert "45 False" in json.dumps(after_tool.messages)
    assert result.outputs["compute"] == "the sum is 45"


@needs_bwrap
def test_a_tool_phase_runs_linux_shell_and_the_next_reads_its_files(llm_server):
    spec = load_cascade(
        {
            "cascade_id": "shell_demo",
            "phases": [
                {
                    "name": "write",
                    "tool": "linux_shell",
                    "inputs": {"command": "echo {{ input.region }} > region.txt; cat region.txt"},
                },
                # Naming the write phase's output orders the phases (else they may run in parallel).
                {
                    "name": "read",
                    "tool": "linux_shell",
                    "inputs": {
                        "command": "echo '{{ outputs.write | trim }}' | cmp - region.txt"
                        " && tr a-z A-Z < region.txt"
                    },
                },
                {"name": "fail", "tool": "linux_shell", "inputs": {"command": "exit 4"}},
            ],
        }
    )
    result = run_cascade(spec, {"region": "emea"}, RunOptions(model_factory=server_models(llm_server)))
    assert result.status == "success", result.error
    assert result.outputs["write"] == "emea\n"
    assert result.outputs["read"] == "EMEA\n"
    assert result.outputs["fail"] == "Exit code: 4\n\n"
    assert llm_server.requests == []


def test_validation_names_the_code_tools_as_usable_here(tmp_path: Path):
    path = tmp_path / "code.yaml"
    path.write_text(
        "cascade_id: c\nphases:\n"
        "  - {name: a, instructions: go, tackle: [run_code, linux_shell]}\n"
        "  - {name: b, tool: linux_shell, inputs: {command: ls}}\n"
    )
    messages = [issue.message for issue in check_cascade(path).issues]
    if bubblewrap_available():
        assert messages == []
    else:
        assert any("bubblewrap" in message for message in messages)
