#!/usr/bin/env python3
"""A stand-in ``kcli`` for tests: kcli's command-line contract for VMs, without libvirt.

It parses its arguments the way kcli does (argparse, global ``-C``/``-o`` before the verb, ``-o`` also
after it), keeps VMs in a JSON state file between calls and answers with kcli's exit codes:

* ``version``; ``list vm``; ``info vm NAME...`` (exit 1 when a VM is not found);
* ``create vm [-i IMAGE | -p PROFILE] [-P key=value]... [--wait] [--force] NAME`` (exit 1 when it exists);
* ``delete vm -y NAME...`` (refuses without ``-y`` or without a name, where real kcli would prompt or
  delete the *last* VM); ``start|stop|restart vm NAME...``.

VMs live per client (``-C aws`` sees other VMs than the default client ``local``). Every call appends
one JSON line (its argv, client, uid, ``SUDO_USER``, whether it came over SSH) to the invocation log,
so tests can assert what reached kcli and how often.

Environment: ``FAKE_KCLI_STATE`` (required) is the state file; the log is ``<state>.calls.jsonl``.
Test knobs in the state file: ``"fail": {"<verb>": "message"}`` makes that verb exit 1 with the message on
stderr; ``"sleep": seconds`` delays every call; ``"noise": true`` prints a warning line before JSON.

Stdlib only: it runs under whatever Python the wrapper (see :func:`install`) names, also over SSH.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_CLIENT = "local"
VERSION_LINE = "version: 99.0.202601010000 commit: fake0000 2026/01/01 Available Updates: N/A"


class KcliExit(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code and stderr, like kcli
        raise KcliExit(2, f"{self.prog}: error: {message}")


# ----------------------------------------------------------------------------------------------- state


@contextmanager
def _locked_state(path: Path) -> Iterator[dict[str, Any]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(path.read_text()) if path.exists() and path.stat().st_size else {}
        state.setdefault("clients", {})
        yield state
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(path)


def _parse_param(raw: str) -> tuple[str, Any]:
    if "=" not in raw:
        raise KcliExit(1, f"Wrong parameter {raw}. Should be key=value")
    key, value = raw.split("=", 1)
    try:
        return key, json.loads(value)  # kcli YAML-loads values; JSON is the subset tests use
    except ValueError:
        return key, value


# -------------------------------------------------------------------------------------------- commands


def _vms(state: dict[str, Any], client: str) -> dict[str, dict[str, Any]]:
    return state["clients"].setdefault(client, {"vms": {}, "next_ip": 10})["vms"]


def _public(vm: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in vm.items() if k != "params"}
    if vm["status"] != "up":
        data.pop("ip", None)  # kcli reports no ip until the guest is up
    return data


def _print_output(data: Any, output: str | None, noise: bool) -> None:
    if noise:
        print("Using default parameter file kcli_parameters.yml")
    if output in ("json", "jsoncompact"):
        print(json.dumps(data, indent=None if output == "jsoncompact" else 2))
    elif output == "name":
        for entry in data if isinstance(data, list) else [data]:
            print(entry["name"])
    elif isinstance(data, list):
        print("| Name | Status | Ips | Source | Plan | Profile |")
        for vm in data:
            print(
                f"| {vm['name']} | {vm['status']} | {vm.get('ip', '')} | {vm.get('image', '')} | "
                f"{vm.get('plan', '')} | {vm.get('profile', '')} |"
            )
    else:
        for key, value in data.items():
            print(f"{key}: {value}")


def _create(args: argparse.Namespace, state: dict[str, Any], client: str) -> None:
    if args.image and args.profile:
        raise KcliExit(
            2, "kcli create vm: error: argument -i/--image: not allowed with argument -p/--profile"
        )
    if not args.name:
        raise KcliExit(1, "The fake kcli wants an explicit VM name (real kcli would invent one)")
    vms = _vms(state, client)
    if args.name in vms and not args.force:
        raise KcliExit(1, f"VM {args.name} already exists")
    params = dict(_parse_param(p) for p in args.param or [])
    started = params.get("start", True) not in (False, "false", "False")
    slot = state["clients"][client]
    slot["next_ip"] += 1
    vms[args.name] = {
        "name": args.name,
        "status": "up" if started else "down",
        "ip": f"192.168.122.{slot['next_ip']}",
        "image": args.image or "",
        "profile": args.profile or args.image or "kvirt",
        "plan": params.get("plan", "kvirt"),
        "memory": params.get("memory", 512),
        "numcpus": params.get("numcpus", 2),
        "user": "cloud-user",
        "creationdate": time.strftime("%d-%m-%Y %H:%M"),
        "params": params,
    }
    source = (
        f"image {args.image}" if args.image else f"profile {args.profile}" if args.profile else "defaults"
    )
    print(f"Deploying vm {args.name} from {source}...")
    print(f"{args.name} created on {client}")


def _run(args: argparse.Namespace, state: dict[str, Any]) -> None:
    client = args.client or DEFAULT_CLIENT
    output = args.global_output or getattr(args, "output", None)
    noise = bool(state.get("noise"))
    failing = state.get("fail", {}).get(args.verb)
    if failing:
        raise KcliExit(1, failing)
    if args.verb == "version":
        print(VERSION_LINE)
        return
    vms = _vms(state, client)
    if args.verb == "list":
        _print_output([_public(vm) for vm in sorted(vms.values(), key=lambda v: v["name"])], output, noise)
    elif args.verb == "info":
        missing = [n for n in args.names if n not in vms]
        for name in args.names:
            if name in vms:
                _print_output(_public(vms[name]), output, noise)
        if missing:
            raise KcliExit(1, "\n".join(f"VM {n} not found" for n in missing))
    elif args.verb == "create":
        _create(args, state, client)
    elif args.verb == "delete":
        if not args.names:
            raise KcliExit(1, "The fake kcli refuses to delete the last VM: name the VM to delete")
        if not args.yes:
            raise KcliExit(1, "Are you sure? [y/N]: the fake kcli cannot prompt, pass -y")
        missing = [n for n in args.names if n not in vms]
        for name in args.names:
            if name in vms:
                del vms[name]
                print(f"{name} deleted on {client}")
        if missing:
            raise KcliExit(1, "\n".join(f"VM {n} not found" for n in missing))
    else:  # start / stop / restart
        missing = [n for n in args.names if n not in vms]
        if missing:
            raise KcliExit(1, "\n".join(f"VM {n} not found" for n in missing))
        for name in args.names:
            vms[name]["status"] = "down" if args.verb == "stop" else "up"
            print(f"{name} {args.verb}{'ped' if args.verb == 'stop' else 'ed'}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kcli")
    parser.add_argument("-C", "--client")
    parser.add_argument("-d", "--debug", action="store_true")
    parser.add_argument(
        "-o", "--output", dest="global_output", choices=["json", "jsoncompact", "name", "yaml"]
    )
    parser.add_argument("-r", "--region")
    parser.add_argument("-z", "--zone")
    parser.add_argument("-n", "--namespace")
    verbs = parser.add_subparsers(dest="verb", parser_class=_Parser, required=True)
    verbs.add_parser("version")
    for verb in ("list", "info", "create", "delete", "start", "stop", "restart"):
        sub = verbs.add_parser(verb).add_subparsers(dest="kind", parser_class=_Parser, required=True)
        vm = sub.add_parser("vm", aliases=["vms"])
        if verb in ("list", "info"):
            vm.add_argument("-o", "--output", choices=["json", "jsoncompact", "name", "yaml"])
        if verb == "list":
            vm.add_argument("-P", "--param", action="append")
        elif verb == "create":
            vm.add_argument("-i", "--image")
            vm.add_argument("-p", "--profile")
            vm.add_argument("-P", "--param", action="append")
            vm.add_argument("--paramfile")
            vm.add_argument("--wait", action="store_true")
            vm.add_argument("--force", action="store_true")
            vm.add_argument("name", nargs="?")
        else:
            if verb == "delete":
                vm.add_argument("-y", "--yes", action="store_true")
            if verb == "stop":
                vm.add_argument("-s", "--soft", action="store_true")
            if verb == "restart":
                vm.add_argument("--hard", action="store_true")
            vm.add_argument("names", nargs="*" if verb != "info" else "+")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    state_env = os.environ.get("FAKE_KCLI_STATE")
    if not state_env:
        print("fake kcli: FAKE_KCLI_STATE is not set", file=sys.stderr)
        return 3
    state_path = Path(state_env)
    log_path = state_path.with_suffix(state_path.suffix + ".calls.jsonl")
    try:
        args = build_parser().parse_args(argv)
    except KcliExit as err:
        args = None
        parse_error: KcliExit | None = err
    else:
        parse_error = None
    entry = {
        "argv": argv,
        "client": (args.client if args else None) or DEFAULT_CLIENT,
        "uid": os.getuid(),
        "sudo_user": os.environ.get("SUDO_USER"),
        "via_ssh": "SSH_CONNECTION" in os.environ,
        "time": time.time(),
    }
    with open(log_path, "a") as log:
        log.write(json.dumps(entry) + "\n")
    if parse_error is not None:
        print(parse_error.message, file=sys.stderr)
        return parse_error.code
    with _locked_state(state_path) as state:
        delay = float(state.get("sleep", 0) or 0)
    if delay:
        time.sleep(delay)
    try:
        with _locked_state(state_path) as state:
            _run(args, state)
    except KcliExit as err:
        if err.message:
            print(err.message, file=sys.stderr)
        return err.code
    return 0


# ----------------------------------------------------------------------------------- helpers for tests


class FakeKcli:
    """Test-side view of one fake kcli installation: its wrapper, state and invocation log."""

    def __init__(self, bin_dir: Path, state: Path) -> None:
        self.bin_dir = bin_dir
        self.state = state
        self.path = bin_dir / "kcli"

    @property
    def log(self) -> Path:
        return self.state.with_suffix(self.state.suffix + ".calls.jsonl")

    def calls(self, verb: str | None = None) -> list[dict[str, Any]]:
        """Logged invocations (optionally only those whose verb, after global options, is ``verb``)."""
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [e for e in entries if verb is None or _verb_of(e["argv"]) == verb]

    def vms(self, client: str = DEFAULT_CLIENT) -> dict[str, dict[str, Any]]:
        if not self.state.exists():
            return {}
        return json.loads(self.state.read_text()).get("clients", {}).get(client, {}).get("vms", {})

    def configure(self, **knobs: Any) -> None:
        """Set test knobs (``fail``, ``sleep``, ``noise``) in the state file."""
        with _locked_state(self.state) as state:
            state.update(knobs)


def _verb_of(argv: list[str]) -> str | None:
    takes_value = {"-C", "--client", "-o", "--output", "-r", "--region", "-z", "--zone", "-n", "--namespace"}
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item in takes_value:
            skip = True
        elif not item.startswith("-"):
            return item
    return None


def install(bin_dir: Path, state: Path, python: str | None = None) -> FakeKcli:
    """Write ``bin_dir/kcli``: a shell wrapper that runs this script with ``state`` baked in.

    Baking the state path into the wrapper lets the same program work locally, over SSH (where the
    session environment is sshd's) and behind ``sudo`` (which resets the environment).
    """
    import shlex

    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "kcli"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"FAKE_KCLI_STATE={shlex.quote(str(state))}\n"
        "export FAKE_KCLI_STATE\n"
        f'exec {shlex.quote(python or sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return FakeKcli(bin_dir, state)


if __name__ == "__main__":
    sys.exit(main())
