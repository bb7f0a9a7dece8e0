"""Issue 14.6: values that kcli would misread, or that display as something they are not, never reach it.

Three layers, each tested where a user meets it: the deployment spec (file:line errors when the DAG
file is parsed), the operators (an error when the task is built) and the hook (right before kcli
runs, for values only known then: rendered templates, XCom). kcli is the stand-in program
(tests/support/fake_kcli.py) whose invocation log shows whether anything reached it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pendulum
import pytest

from airflow_llm_provider.hooks.qubinode import QubinodeConfigError, QubinodeHook
from tests.support.fake_kcli import FakeKcli, install

CONN_ID = "qubinode_args"

# Each refused character, with the escaped form the error must show (never the raw character).
REFUSED = [
    ("\r", r"\r (U+000D, a control character)"),
    ("\n", r"\n (U+000A, a control character)"),
    ("\t", r"\t (U+0009, a control character)"),
    ("\0", r"\x00 (U+0000, a control character)"),
    ("\x85", r"\x85 (U+0085, a control character)"),
    ("\u202e", r"\u202e (U+202E RIGHT-TO-LEFT OVERRIDE, a format character)"),
    ("\u2066", r"\u2066 (U+2066 LEFT-TO-RIGHT ISOLATE, a format character)"),
    ("\u200b", r"\u200b (U+200B ZERO WIDTH SPACE, a format character)"),
    ("\u2028", r"\u2028 (U+2028 LINE SEPARATOR, a line separator)"),
    ("\u2029", r"\u2029 (U+2029 PARAGRAPH SEPARATOR, a paragraph separator)"),
]
REFUSED_IDS = [f"U+{ord(ch):04X}" for ch, _ in REFUSED]


@pytest.fixture
def kcli(tmp_path: Path) -> FakeKcli:
    return install(tmp_path / "bin", tmp_path / "kcli-state.json")


@pytest.fixture
def hook(kcli: FakeKcli, airflow_conn) -> QubinodeHook:
    airflow_conn(CONN_ID, {"conn_type": "qubinode", "extra": {"mode": "local", "kcli_path": str(kcli.path)}})
    return QubinodeHook(qubinode_conn_id=CONN_ID)


def _refused(call: Any, *needles: str) -> str:
    with pytest.raises((QubinodeConfigError, ValueError)) as caught:
        call()
    message = str(caught.value)
    for needle in needles:
        assert needle in message, message
    # The message is safe to log: nothing in it is unprintable itself.
    assert all(ch.isprintable() for ch in message), ascii(message)
    return message


# -- the hook: the last check before kcli runs --------------------------------------------------


@pytest.mark.parametrize("value", ["-rf", "--force", "-y"])
def test_option_like_image_or_profile_is_refused(hook: QubinodeHook, kcli: FakeKcli, value: str) -> None:
    _refused(lambda: hook.create_vm("web-1", image=value), f"image {value!r} starts with '-'")
    _refused(lambda: hook.create_vm("web-1", profile=value), f"profile {value!r} starts with '-'")
    assert kcli.calls("create") == []


@pytest.mark.parametrize(("char", "shown"), REFUSED, ids=REFUSED_IDS)
def test_unprintable_characters_are_refused_in_every_value(
    hook: QubinodeHook, kcli: FakeKcli, char: str, shown: str
) -> None:
    _refused(lambda: hook.create_vm(f"web{char}1", image="centos9stream"), "VM name", shown, "position 3")
    _refused(lambda: hook.create_vm("web-1", image=f"centos{char}"), "image", shown)
    _refused(lambda: hook.create_vm("web-1", profile=f"small{char}"), "profile", shown)
    _refused(
        lambda: hook.create_vm("web-1", image="c9", params={"pool": f"default{char}"}), "['pool']", shown
    )
    _refused(lambda: hook.create_plan(f"lab{char}", file="lab.yml"), "plan name", shown)
    _refused(lambda: hook.create_plan("lab", file=f"lab{char}.yml"), "plan file", shown)
    _refused(lambda: hook.create_kube(f"edge{char}"), "cluster name", shown)
    _refused(lambda: hook.delete_vm(f"web{char}1"), "VM name", shown)
    _refused(lambda: hook.start_vm(f"web{char}1"), "VM name", shown)
    assert kcli.calls() == []  # nothing reached kcli, not even a lookup


def test_parameter_errors_name_the_key_and_never_the_value(hook: QubinodeHook, kcli: FakeKcli) -> None:
    password = "hunter2-very-secret"
    message = _refused(
        lambda: hook.create_vm("web-1", image="c9", params={"admin_password": f"{password}\r"}),
        "kcli parameter['admin_password']",
        r"\r (U+000D",
    )
    assert password not in message
    # Nested values reach kcli as JSON that its YAML parser decodes again: checked at any depth.
    _refused(
        lambda: hook.create_vm("web-1", image="c9", params={"nets": [{"name": "default\u2028"}]}),
        "kcli parameter['nets'][0]['name']",
        r"\u2028",
    )
    assert kcli.calls() == []


def test_any_kcli_command_is_checked_right_before_it_runs(
    kcli: FakeKcli, airflow_conn, hook: QubinodeHook
) -> None:
    # run_kcli takes any verb: the generic check in the argv builder still applies.
    _refused(lambda: hook.run_kcli("list", "vm\u202e"), "kcli argument", r"\u202e", "nothing was run")
    # The connection's (or an operator's) kcli client is an option value of its own.
    extra = {"mode": "local", "kcli_path": str(kcli.path), "kcli_client": "-x"}
    airflow_conn("qubinode_bad_client", {"conn_type": "qubinode", "extra": extra})
    bad_client = QubinodeHook(qubinode_conn_id="qubinode_bad_client")
    _refused(bad_client.list_vms, "kcli_client '-x' starts with '-'")
    assert kcli.calls() == []


def test_printable_unicode_and_option_like_parameter_values_still_work(
    hook: QubinodeHook, kcli: FakeKcli
) -> None:
    # Only what does not print is refused: accented names, and '-' inside -P values, are fine.
    vm = hook.create_vm("wëb-ñode-1", image="centos9stream", params={"cmdline": "-quiet", "note": "café"})
    assert vm["name"] == "wëb-ñode-1"
    (create,) = kcli.calls("create")
    assert create["argv"][-5:] == ["-P", "cmdline=-quiet", "-P", "note=café", "wëb-ñode-1"]


# -- the operators: when the DAG is parsed -------------------------------------------------------


def test_operators_refuse_bad_values_when_the_dag_is_built() -> None:
    from airflow_llm_provider.operators.qubinode import (
        QubinodeCreateVMOperator,
        QubinodeDeleteVMOperator,
        QubinodeKubeOperator,
        QubinodePlanOperator,
        QubinodeVMActionOperator,
    )

    create = QubinodeCreateVMOperator
    _refused(
        lambda: create(task_id="t1", vm_name="web-1", image="--force"), "image '--force' starts with '-'"
    )
    _refused(lambda: create(task_id="t2", vm_name="web-1", profile="-p"), "profile '-p' starts with '-'")
    _refused(lambda: create(task_id="t3", vm_name="web\u202e1", image="c9"), "vm_name", r"\u202e (U+202E")
    _refused(
        lambda: create(task_id="t4", vm_name="web-1", image="c9", kcli_params={"token": "ab\rcd"}),
        "kcli_params['token']",
        r"\r (U+000D",
    )
    _refused(lambda: create(task_id="t5", vm_name="w", image="c9", kcli_client="aws\n"), "kcli_client", r"\n")
    _refused(lambda: QubinodeDeleteVMOperator(task_id="t6", vm_name="-y"), "vm_name '-y' starts with '-'")
    _refused(
        lambda: QubinodeVMActionOperator(task_id="t7", vm_name="a\u2029b", action="start"),
        "vm_name",
        r"\u2029",
    )
    _refused(lambda: QubinodePlanOperator(task_id="t8", plan="lab", plan_file="-f"), "plan_file '-f'")
    _refused(
        lambda: QubinodeKubeOperator(task_id="t9", cluster="edge", kcli_params={"tag": "4.16\u200b"}),
        "kcli_params['tag']",
        r"\u200b",
    )
    # Templates are rendered later; they are checked again, by the hook, once rendered.
    assert create(task_id="t10", vm_name="{{ params.vm }}", image="{{ params.image }}").vm_name


def test_a_rendered_template_is_refused_by_the_hook_before_kcli_runs(
    dag_runner, airflow_conn, kcli: FakeKcli
) -> None:
    from airflow.providers.common.compat.sdk import DAG

    from airflow_llm_provider.operators.qubinode import QubinodeCreateVMOperator

    airflow_conn(CONN_ID, {"conn_type": "qubinode", "extra": {"mode": "local", "kcli_path": str(kcli.path)}})
    errors: list[str] = []
    with DAG(
        "qubinode_rendered_args",
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        params={"image": "--force", "vm": "web-1"},
    ) as dag:
        QubinodeCreateVMOperator(
            task_id="create",
            qubinode_conn_id=CONN_ID,
            vm_name="{{ params.vm }}",
            image="{{ params.image }}",
            on_failure_callback=lambda context: errors.append(str(context["exception"])),
        )

    result = dag_runner(dag, logical_date=pendulum.datetime(2026, 3, 1, tz="UTC"))

    assert result.task_states == {"create": "failed"}
    assert errors and "image '--force' starts with '-'" in errors[0]
    assert kcli.calls("create") == []


# -- deployment specs: file:line errors -------------------------------------------------------------


def test_deployment_spec_reports_bad_kcli_values_with_file_and_line(tmp_path: Path) -> None:
    from airflow_llm_provider.deployments import DeploymentSpecError, load_deployment_spec

    path = tmp_path / "web.yaml"
    path.write_text(
        "deployment: web\n"
        "defaults:\n"
        '  image: "-rf"\n'
        "targets:\n"
        "  - name: lab\n"
        "    provider: qubinode\n"
        '    profile: "small\\u202e"\n'
        '    params: {cmds: ["echo a\\rb"]}\n'
        "    vms: [web-1]\n",
        encoding="utf-8",
    )
    with pytest.raises(DeploymentSpecError) as caught:
        load_deployment_spec(path)
    text = str(caught.value)
    assert f"{path}:3: defaults.image: '-rf' starts with '-'" in text
    assert f"{path}:7: targets[0].profile: 'small\\u202e' contains \\u202e (U+202E" in text
    assert f"{path}:8: targets[0].params: params['cmds'][0] contains \\r (U+000D" in text
