#!/usr/bin/env python3
"""A stand-in ``kcli`` for tests: kcli's command-line contract for VMs, without libvirt.

It parses its arguments the way kcli does (argparse, global ``-C``/``-o`` before the verb, ``-o`` also
after it), keeps VMs in a JSON state file between calls and answers with kcli's exit codes:

* ``version``; ``list vm``; ``info vm NAME...`` (exit 1 when a VM is not found);
* ``create vm [-i IMAGE | -p PROFILE] [-P key=value]... [--wait] [--force] NAME`` (exit 1 when it exists);
* ``delete vm -y NAME...`` (refuses without ``-y`` or without a name, where real kcli would prompt or
  delete the *last* VM); ``start|stop|restart vm NAME...``;
* ``create plan -f FILE [-P key=value]... [--paramfile F] PLAN`` (every top-level key of the plan file,
  after ``{{ param }}`` substitution, except ``parameters``, is a VM of the plan; VMs that exist are
  skipped, as kcli does); ``list plan``; ``delete plan -y PLAN`` (deletes the plan's VMs);
* ``create kube KIND [--paramfile F] [-P ctlplanes=N -P workers=N ...] CLUSTER`` (exit 1 when it
  exists; creates ``CLUSTER-ctlplane-<i>`` / ``CLUSTER-worker-<i>`` VMs in plan CLUSTER); ``list kube``;
  ``delete kube -y CLUSTER``.

VMs live per client (``-C aws`` sees other VMs than the default client ``local``). Every call appends
one JSON line (its argv, client, uid, ``SUDO_USER``, whether it came over SSH) to the invocation log,
so tests can assert what reached kcli and how often.

Environment: ``FAKE_KCLI_STATE`` (required) is the state file; the log is ``<state>.calls.jsonl``.
Test knobs in the state file: ``"fail": {"<verb>": "message"}`` makes that verb exit 1 with the message on
stderr; ``"sleep": seconds`` delays every call; ``"noise": true`` prints a warning line before JSON;
``"boot_seconds": N`` keeps a new VM "booting" (status ``boot_status``, default ``up``, and no ip) for N
seconds; ``"ready_file": path`` keeps VMs booting until that file exists; ``"ip": "127.0.0.1"`` gives
every new VM that address (for port checks).

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
KUBE_KINDS = ("generic", "openshift", "k3s", "rke2", "microshift", "hypershift", "aks", "eks", "gke")
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


def _booting(vm: dict[str, Any], state: dict[str, Any]) -> bool:
    if time.time() < vm.get("created", 0) + float(state.get("boot_seconds", 0) or 0):
        return True
    ready_file = state.get("ready_file")
    return bool(ready_file) and not os.path.exists(ready_file)


def _public(vm: dict[str, Any], state: dict[str, Any] | None = None) -> dict[str, Any]:
    data = {k: v for k, v in vm.items() if k not in ("params", "created")}
    if state is not None and vm["status"] == "up" and _booting(vm, state):
        data["status"] = state.get("boot_status", "up")
        data.pop("ip", None)  # no DHCP lease yet
    if data["status"] != "up":
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
    _new_vm(state, client, args.name, args.image, args.profile, params)
    source = (
        f"image {args.image}" if args.image else f"profile {args.profile}" if args.profile else "defaults"
    )
    print(f"Deploying vm {args.name} from {source}...")
    print(f"{args.name} created on {client}")


def _new_vm(
    state: dict[str, Any],
    client: str,
    name: str,
    image: str | None,
    profile: str | None,
    params: dict[str, Any],
) -> dict[str, Any]:
    vms = _vms(state, client)
    started = params.get("start", True) not in (False, "false", "False")
    slot = state["clients"][client]
    slot["next_ip"] += 1
    vms[name] = {
        "name": name,
        "status": "up" if started else "down",
        "ip": state.get("ip") or f"192.168.122.{slot['next_ip']}",
        "image": image or "",
        "profile": profile or image or "kvirt",
        "plan": params.get("plan", "kvirt"),
        "memory": params.get("memory", 512),
        "numcpus": params.get("numcpus", 2),
        "user": "cloud-user",
        "creationdate": time.strftime("%d-%m-%Y %H:%M"),
        "created": time.time(),
        "params": params,
    }
    return vms[name]


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if getattr(args, "paramfile", None):
        path = Path(args.paramfile)
        if not path.is_file():
            raise KcliExit(1, f"Parameter file {args.paramfile} not found")
        for line in path.read_text().splitlines():  # flat "key: value" files are all tests use
            if ":" in line and not line.lstrip().startswith("#"):
                key, value = line.split(":", 1)
                params[key.strip()] = _parse_param(f"{key.strip()}={value.strip()}")[1]
    params.update(dict(_parse_param(p) for p in args.param or []))
    return params


def _plans(vms: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    plans: dict[str, list[str]] = {}
    for vm in sorted(vms.values(), key=lambda v: v["name"]):
        if vm.get("plan") and vm["plan"] != "kvirt":
            plans.setdefault(vm["plan"], []).append(vm["name"])
    return plans


def _create_plan(args: argparse.Namespace, state: dict[str, Any], client: str) -> None:
    import re

    if not args.plan:
        raise KcliExit(1, "The fake kcli wants an explicit plan name")
    if not args.inputfile:
        raise KcliExit(1, "The fake kcli wants -f PLANFILE")
    path = Path(args.inputfile)
    if not path.is_file():
        raise KcliExit(1, f"No input file found nor default kcli_plan.yml.Leaving....: {args.inputfile}")
    params = _params(args)
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(params.get(m.group(1), m.group(0))), path.read_text())
    names = [m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+):\s*$", text, re.MULTILINE)]
    vms = _vms(state, client)
    print(f"Deploying plan {args.plan} from {args.inputfile}")
    for name in names:
        if name == "parameters":
            continue
        if name in vms:
            print(f"VM {name} already exists, skipping")
            continue
        _new_vm(state, client, name, "fake-image", None, {**params, "plan": args.plan})
        print(f"{name} deployed on {client}")
    print(f"Plan {args.plan} deployed")


def _create_kube(args: argparse.Namespace, state: dict[str, Any], client: str) -> None:
    if not args.cluster:
        raise KcliExit(1, "The fake kcli wants an explicit cluster name")
    kubes = state["clients"][client].setdefault("kubes", {})
    if args.cluster in kubes:
        raise KcliExit(1, f"Cluster {args.cluster} already there")
    params = _params(args)
    ctlplanes = int(params.get("ctlplanes", 1))
    workers = int(params.get("workers", 0))
    names = [f"{args.cluster}-ctlplane-{i}" for i in range(ctlplanes)]
    names += [f"{args.cluster}-worker-{i}" for i in range(workers)]
    for name in names:
        _new_vm(state, client, name, "fake-image", None, {**params, "plan": args.cluster})
        print(f"Deploying {args.kube_type} node {name}")
    kubes[args.cluster] = {
        "cluster": args.cluster,
        "type": args.kube_type,
        "plan": args.cluster,
        "vms": names,
        "version": str(params.get("version", "stable")),
        "kubeconfig": f"~/.kcli/clusters/{args.cluster}/auth/kubeconfig",
    }
    kubeconfig = f"~/.kcli/clusters/{args.cluster}/auth/kubeconfig"
    print(f"Kubernetes cluster {args.cluster} deployed. export KUBECONFIG={kubeconfig}")


def _run_plan_or_kube(
    args: argparse.Namespace, state: dict[str, Any], client: str, output: str | None
) -> None:
    vms = _vms(state, client)
    kubes = state["clients"][client].setdefault("kubes", {})
    if args.kind == "plan":
        if args.verb == "list":
            data = [{"plan": plan, "vms": names} for plan, names in _plans(vms).items()]
            print(
                json.dumps(data) if output in ("json", "jsoncompact") else "\n".join(d["plan"] for d in data)
            )
        elif args.verb == "create":
            _create_plan(args, state, client)
        elif args.verb == "delete":
            if not args.yes:
                raise KcliExit(1, "Are you sure? [y/N]: the fake kcli cannot prompt, pass -y")
            names = _plans(vms).get(args.plan, [])
            if not names:
                print(f"Nothing to do for plan {args.plan}")
            for name in names:
                del vms[name]
                print(f"{name} deleted on {client}")
            print(f"Plan {args.plan} deleted")
    else:
        if args.verb == "list":
            data = sorted(kubes.values(), key=lambda k: k["cluster"])
            print(
                json.dumps(data)
                if output in ("json", "jsoncompact")
                else "\n".join(d["cluster"] for d in data)
            )
        elif args.verb == "create":
            _create_kube(args, state, client)
        elif args.verb == "delete":
            if not args.yes:
                raise KcliExit(1, "Are you sure? [y/N]: the fake kcli cannot prompt, pass -y")
            if args.cluster not in kubes:
                raise KcliExit(1, f"Cluster {args.cluster} not found")
            for name in kubes.pop(args.cluster)["vms"]:
                vms.pop(name, None)
                print(f"{name} deleted on {client}")
            print(f"Cluster {args.cluster} deleted")


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
    if args.kind in ("plan", "kube"):
        if noise:
            print("Using default parameter file kcli_parameters.yml")
        _run_plan_or_kube(args, state, client, output)
    elif args.verb == "list":
        _print_output(
            [_public(vm, state) for vm in sorted(vms.values(), key=lambda v: v["name"])], output, noise
        )
    elif args.verb == "info":
        missing = [n for n in args.names if n not in vms]
        for name in args.names:
            if name in vms:
                _print_output(_public(vms[name], state), output, noise)
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
        if verb in ("list", "create", "delete"):
            plan = sub.add_parser("plan")
            kube = sub.add_parser("kube")
            for kind_parser in (plan, kube):
                if verb == "list":
                    kind_parser.add_argument(
                        "-o", "--output", choices=["json", "jsoncompact", "name", "yaml"]
                    )
                if verb == "delete":
                    kind_parser.add_argument("-y", "--yes", action="store_true")
            if verb == "create":
                plan.add_argument("-f", "--inputfile")
                plan.add_argument("-u", "--url")
                plan.add_argument("-P", "--param", action="append")
                plan.add_argument("--paramfile")
                plan.add_argument("--force", action="store_true")
                plan.add_argument("plan", nargs="?")
                kinds = kube.add_subparsers(dest="kube_type", parser_class=_Parser, required=True)
                for kube_kind in KUBE_KINDS:
                    kind_parser = kinds.add_parser(kube_kind)
                    kind_parser.add_argument("-P", "--param", action="append")
                    kind_parser.add_argument("--paramfile")
                    kind_parser.add_argument("--force", action="store_true")
                    kind_parser.add_argument("cluster", nargs="?")
            elif verb == "delete":
                plan.add_argument("plan")
                kube.add_argument("cluster")
    return parser


def ansible_playbook_main(argv: list[str]) -> int:
    """A stand-in ``ansible-playbook``: logs its argv, cwd and ANSIBLE_* env, prints a play per task.

    The playbook is a file whose non-empty lines are task names; a line ``fail`` makes that task fail
    (exit 2, like ansible on a failed host). A missing playbook is ansible's exit 1.
    """
    parser = argparse.ArgumentParser(prog="ansible-playbook")
    parser.add_argument("-i", "--inventory")
    parser.add_argument("-e", "--extra-vars", action="append", default=[])
    parser.add_argument("-l", "--limit")
    parser.add_argument("-t", "--tags")
    parser.add_argument("--vault-password-file")
    parser.add_argument("-C", "--check", action="store_true")
    parser.add_argument("playbook")
    args = parser.parse_args(argv)
    log_path = os.environ.get("FAKE_ANSIBLE_LOG")
    extra: dict[str, Any] = {}
    for item in args.extra_vars:
        extra.update(json.loads(item))
    if log_path:
        entry = {
            "argv": argv,
            "cwd": os.getcwd(),
            "extra_vars": extra,
            "env": {k: v for k, v in os.environ.items() if k.startswith(("ANSIBLE_", "DEMO_"))},
            "via_ssh": "SSH_CONNECTION" in os.environ,
        }
        with open(log_path, "a") as log:
            log.write(json.dumps(entry) + "\n")
    playbook = Path(args.playbook)
    if not playbook.is_file():
        print(f"ERROR! the playbook: {args.playbook} could not be found", file=sys.stderr)
        return 1
    print(f"PLAY [{args.limit or 'all'}] " + "*" * 20, flush=True)
    ok = 0
    for task in [line.strip() for line in playbook.read_text().splitlines() if line.strip()]:
        print(f"TASK [{task}] " + "*" * 20, flush=True)
        if task == "fail":
            print(f'fatal: [localhost]: FAILED! => {{"msg": "task {task} failed"}}', flush=True)
            print(f"PLAY RECAP\nlocalhost : ok={ok} changed=0 unreachable=0 failed=1", flush=True)
            return 2
        print("ok: [localhost]", flush=True)
        ok += 1
        time.sleep(float(extra.get("task_seconds", 0) or 0))
    print("PLAY RECAP " + "*" * 20, flush=True)
    print(f"localhost : ok={ok} changed=0 unreachable=0 failed=0", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get("FAKE_TOOL") == "ansible-playbook":
        return ansible_playbook_main(argv)
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


def install_ansible_playbook(bin_dir: Path, log: Path, python: str | None = None) -> Path:
    """Write ``bin_dir/ansible-playbook``, a stand-in logging each call to ``log`` (JSON lines)."""
    import shlex

    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "ansible-playbook"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"FAKE_ANSIBLE_LOG={shlex.quote(str(log))}\n"
        "FAKE_TOOL=ansible-playbook\n"
        "export FAKE_ANSIBLE_LOG FAKE_TOOL\n"
        f'exec {shlex.quote(python or sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def ansible_calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
