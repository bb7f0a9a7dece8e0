"""OpenLineage events of the Qubinode operators and the VM sensor.

A real ``airflow dags test`` (OpenLineage file transport) of a Qubinode DAG, kcli being the stand-in
program reached over Debian's real sshd: START/COMPLETE datasets and facets field by field, FAIL
with the error (through the extractor registered in the config), and no password, private key or
secret ``-P``/env value anywhere in the raw events. Plus unit checks of the naming, the redaction and
the extractor, on both Airflow lines.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.lineage import LineageCapture
from tests.fixtures.sshd import SshServer
from tests.support.fake_kcli import FakeKcli, install

RHN_PASSWORD = "rhn-SECRET-51c2e0"  # a secret kcli -P param
API_TOKEN = "tok-SECRET-9d3e77"  # a secret component env value, echoed by the failing script
SSH_PASSWORD = "ssh-SECRET-pw-4b1f"  # the connection's password (the key is what logs in)
PULL_SECRET = "pull-SECRET-0a9c"  # a secret -P param of a plan on the aws client
CONN_ID = "qb_ol"
LOGICAL_DATE = "2026-03-04"
VM = "web-20260304"
FAIL_MESSAGE = "libvirt: no space left on pool default"
EXTRACTOR = "airflow_llm_provider.lineage.qubinode_extractors.QubinodeExtractor"

DAG_FILE = """\
import pendulum

from airflow.providers.common.compat.sdk import DAG

from airflow_llm_provider.operators.qubinode import (
    QubinodeCreateVMOperator,
    QubinodeDeleteVMOperator,
    QubinodeDeployComponentOperator,
    QubinodePlanOperator,
)
from airflow_llm_provider.sensors.qubinode import QubinodeVMSensor

START = pendulum.datetime(2026, 1, 1, tz="UTC")
CONN = {conn_id!r}

with DAG("qb_lineage", schedule=None, start_date=START, catchup=False):
    create = QubinodeCreateVMOperator(
        task_id="create",
        qubinode_conn_id=CONN,
        vm_name="web-{{{{ ds_nodash }}}}",
        image="centos9stream",
        kcli_params={{"memory": 2048, "numcpus": 2, "nets": ["default"], "rhnpassword": {rhn!r}}},
    )
    wait = QubinodeVMSensor(
        task_id="wait", qubinode_conn_id=CONN, vm_name="web-{{{{ ds_nodash }}}}", require_ip=True
    )
    delete = QubinodeDeleteVMOperator(
        task_id="delete", qubinode_conn_id=CONN, vm_name="web-{{{{ ds_nodash }}}}", trigger_rule="all_done"
    )
    plan = QubinodePlanOperator(
        task_id="plan",
        qubinode_conn_id=CONN,
        kcli_client="aws",
        plan="lab",
        plan_file={plan_file!r},
        kcli_params={{"prefix": "qa", "pull_secret": {pull!r}}},
    )
    create >> wait >> delete
    plan >> delete


with DAG("qb_lineage_fail", schedule=None, start_date=START, catchup=False):
    QubinodeCreateVMOperator(
        task_id="create",
        qubinode_conn_id=CONN,
        vm_name="db-1",
        image="centos9stream",
        kcli_params={{"rhnpassword": {rhn!r}}},
        retries=0,
    )
    QubinodeDeployComponentOperator(
        task_id="component",
        qubinode_conn_id=CONN,
        component="app",
        env={{"VM_NAME": "app-1", "API_TOKEN": {token!r}}},
        retries=0,
    )
"""
DEPLOY_SH = 'echo "deploying $VM_NAME" ; echo "could not log in with $API_TOKEN" >&2 ; exit 3\n'


@dataclass
class QbRun:
    events: list[dict[str, Any]]
    raw: str
    outputs: dict[str, str]
    sshd: SshServer
    kcli: FakeKcli
    plan_file: Path
    script: Path

    def task_events(self, job: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["job"]["name"] == job]


@pytest.fixture(scope="module")
def qb_run(sshd: SshServer, tmp_path_factory: pytest.TempPathFactory) -> QbRun:
    """Both DAGs run once with ``airflow dags test``; the failing one with the extractor registered
    through ``[openlineage] extractors`` (the first through the operators' methods)."""
    from tests.fixtures.airflow_server import clean_airflow_env

    root = tmp_path_factory.mktemp("qb_ol")
    kcli = install(root / "bin", root / "kcli-state.json")
    plan_file = root / "lab.yml"
    plan_file.write_text("{{ prefix }}-a:\n  image: x\n{{ prefix }}-b:\n  image: x\n")
    script = root / "pipelines" / "app" / "deploy.sh"
    script.parent.mkdir(parents=True)
    script.write_text(DEPLOY_SH)
    dags = root / "dags"
    dags.mkdir()
    (dags / "qb_dags.py").write_text(
        DAG_FILE.format(
            conn_id=CONN_ID, rhn=RHN_PASSWORD, token=API_TOKEN, pull=PULL_SECRET, plan_file=str(plan_file)
        )
    )
    connection = sshd.qubinode_connection(kcli_path=str(kcli.path), pipelines_dir=str(root / "pipelines"))
    connection["password"] = SSH_PASSWORD
    capture = LineageCapture(path=root / "openlineage.jsonl")
    env = clean_airflow_env()
    env.update(
        {
            "AIRFLOW_HOME": str(root),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root}/airflow.db",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(connection),
            **capture.env,
        }
    )
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    outputs: dict[str, str] = {}
    extractor = {"AIRFLOW__OPENLINEAGE__EXTRACTORS": EXTRACTOR}
    for dag_id, extra in (("qb_lineage", {}), ("qb_lineage_fail", extractor)):
        if dag_id == "qb_lineage_fail":
            kcli.configure(fail={"create": FAIL_MESSAGE})
        result = subprocess.run(
            [*airflow, "dags", "test", dag_id, LOGICAL_DATE],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=300,
        )
        outputs[dag_id] = result.stdout[-6000:] + result.stderr[-6000:]
    raw = capture.path.read_text() if capture.path.exists() else ""
    return QbRun(capture.events(), raw, outputs, sshd, kcli, plan_file, script)


def _facet(dataset: dict[str, Any]) -> dict[str, Any]:
    facet = dict(dataset["facets"]["airflowLlm_qubinodeResource"])
    assert facet.pop("_producer") == PRODUCER
    assert facet.pop("_schemaURL") == SCHEMA_URL
    return facet


def _lifecycle(dataset: dict[str, Any]) -> str | None:
    facet = dataset["facets"].get("lifecycleStateChange")
    return facet["lifecycleStateChange"] if facet else None


def _names(datasets: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in datasets]


PRODUCER = "https://github.com/airflow-llm-provider/airflow-llm-provider/tree/0.1.0"
SCHEMA_URL = (
    "https://github.com/airflow-llm-provider/airflow-llm-provider/blob/0.1.0/airflow_llm_provider/"
    "lineage/schemas/QubinodeResourceDatasetFacet.json#/$defs/QubinodeResourceDatasetFacet"
)
HOST_NS = f"kcli://{socket.gethostname().lower()}"  # the SSH host is 127.0.0.1: this machine


def test_producer_and_schema_constants_match_the_package() -> None:
    from airflow_llm_provider.lineage.facets import PRODUCER as producer
    from airflow_llm_provider.lineage.qubinode import QubinodeResourceDatasetFacet

    assert producer == PRODUCER
    assert QubinodeResourceDatasetFacet._get_schema() == SCHEMA_URL


def test_create_vm_start_and_complete(qb_run: QbRun) -> None:
    events = qb_run.task_events("qb_lineage.create")
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"], qb_run.outputs["qb_lineage"]
    start, complete = events
    assert start["run"]["runId"] == complete["run"]["runId"]
    assert start["job"]["namespace"] == "alp-tests"
    for event in (start, complete):
        assert event["inputs"] == []
        assert _names(event["outputs"]) == [(HOST_NS, f"vm/{VM}")]
        assert _lifecycle(event["outputs"][0]) == "CREATE"
        assert "errorMessage" not in event["run"]["facets"]
    params = {"memory": 2048, "numcpus": 2, "nets": ["default"], "rhnpassword": "***"}
    assert _facet(start["outputs"][0]) == {
        "kind": "vm",
        "action": "create",
        "image": "centos9stream",
        "params": params,
    }
    done = _facet(complete["outputs"][0])
    ip = done.pop("ip")
    assert re.fullmatch(r"192\.168\.122\.\d+", ip)
    assert done == {
        "kind": "vm",
        "action": "create",
        "image": "centos9stream",
        "profile": "centos9stream",  # as kcli reports it (the image, when no profile was named)
        "params": params,
        "status": "up",
    }


def test_sensor_reads_the_vm_and_delete_drops_it(qb_run: QbRun) -> None:
    wait = qb_run.task_events("qb_lineage.wait")
    assert [e["eventType"] for e in wait] == ["START", "COMPLETE"], qb_run.outputs["qb_lineage"]
    for event in wait:
        assert _names(event["inputs"]) == [(HOST_NS, f"vm/{VM}")] and event["outputs"] == []
        assert _lifecycle(event["inputs"][0]) is None
    assert _facet(wait[0]["inputs"][0]) == {"kind": "vm", "action": "wait"}
    created = _facet(qb_run.task_events("qb_lineage.create")[1]["outputs"][0])
    assert _facet(wait[1]["inputs"][0]) == {
        "kind": "vm",
        "action": "wait",
        "image": "centos9stream",
        "profile": "centos9stream",
        "status": "up",
        "ip": created["ip"],
    }

    delete = qb_run.task_events("qb_lineage.delete")
    assert [e["eventType"] for e in delete] == ["START", "COMPLETE"], qb_run.outputs["qb_lineage"]
    for event in delete:
        assert _names(event["outputs"]) == [(HOST_NS, f"vm/{VM}")] and event["inputs"] == []
        assert _lifecycle(event["outputs"][0]) == "DROP"
    assert _facet(delete[0]["outputs"][0]) == {"kind": "vm", "action": "delete"}
    assert _facet(delete[1]["outputs"][0]) == {"kind": "vm", "action": "delete", "status": "deleted"}


def test_plan_on_a_cloud_client_with_its_vms(qb_run: QbRun) -> None:
    events = qb_run.task_events("qb_lineage.plan")
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"], qb_run.outputs["qb_lineage"]
    start, complete = events
    plan = {
        "kind": "plan",
        "action": "create",
        "kcliClient": "aws",
        "source": str(qb_run.plan_file),
        "params": {"prefix": "qa", "pull_secret": "***"},
    }
    assert _names(start["outputs"]) == [("kcli://aws", "plan/lab")]
    assert _facet(start["outputs"][0]) == plan
    assert _names(complete["outputs"]) == [
        ("kcli://aws", "plan/lab"),
        ("kcli://aws", "vm/qa-a"),
        ("kcli://aws", "vm/qa-b"),
    ]
    assert _facet(complete["outputs"][0]) == {**plan, "status": "created", "vms": ["qa-a", "qa-b"]}
    for vm in complete["outputs"][1:]:
        assert _facet(vm) == {"kind": "vm", "kcliClient": "aws"}
        assert _lifecycle(vm) == "CREATE"
    assert qb_run.kcli.vms("aws").keys() == {"qa-a", "qa-b"}  # the plan really ran on the aws client


def test_failed_create_emits_fail_with_the_kcli_error(qb_run: QbRun) -> None:
    """The failing DAG ran with the extractor registered through ``[openlineage] extractors``."""
    events = qb_run.task_events("qb_lineage_fail.create")
    assert [e["eventType"] for e in events] == ["START", "FAIL"], qb_run.outputs["qb_lineage_fail"]
    fail = events[1]
    error = fail["run"]["facets"]["errorMessage"]
    assert FAIL_MESSAGE in error["message"]
    assert "Command failed with exit code 1" in error["message"]
    assert "rhnpassword=***" in error["message"]  # the hook's redacted command line
    assert error["programmingLanguage"] == "python"
    assert _names(fail["outputs"]) == [(HOST_NS, "vm/db-1")]
    assert _facet(fail["outputs"][0]) == {
        "kind": "vm",
        "action": "create",
        "image": "centos9stream",
        "params": {"rhnpassword": "***"},
    }
    assert _lifecycle(fail["outputs"][0]) == "CREATE"


def test_failed_component_emits_fail_without_the_echoed_token(qb_run: QbRun) -> None:
    events = qb_run.task_events("qb_lineage_fail.component")
    assert [e["eventType"] for e in events] == ["START", "FAIL"], qb_run.outputs["qb_lineage_fail"]
    fail = events[1]
    message = fail["run"]["facets"]["errorMessage"]["message"]
    assert "Command failed with exit code 3" in message
    assert "could not log in with ***" in message  # stderr kept, the token masked
    assert _names(fail["outputs"]) == [(HOST_NS, "component/app"), (HOST_NS, "vm/app-1")]
    assert _facet(fail["outputs"][0]) == {
        "kind": "component",
        "action": "create",
        "source": str(qb_run.script),
        "params": {"API_TOKEN": "***", "VM_NAME": "app-1"},
    }
    assert _facet(fail["outputs"][1]) == {"kind": "vm", "action": "create"}


def test_no_password_key_or_secret_param_in_any_event(qb_run: QbRun) -> None:
    jobs = {e["job"]["name"] for e in qb_run.events}
    assert {"qb_lineage.create", "qb_lineage.wait", "qb_lineage.delete", "qb_lineage.plan"} <= jobs
    assert {"qb_lineage_fail.create", "qb_lineage_fail.component"} <= jobs
    key_text = qb_run.sshd.private_key.read_text()
    key_body = "".join(line for line in key_text.splitlines() if "PRIVATE KEY" not in line)
    for forbidden in (RHN_PASSWORD, API_TOKEN, SSH_PASSWORD, PULL_SECRET, key_body[:40], key_body[-40:]):
        assert forbidden not in qb_run.raw, forbidden
    assert "PRIVATE KEY" not in qb_run.raw
    assert str(qb_run.sshd.private_key) not in qb_run.raw  # no connection field at all
    # ...while the secrets did reach kcli and the script (the events hide them, the task did not).
    (create,) = [c for c in qb_run.kcli.calls("create") if "vm" in c["argv"] and VM in c["argv"]]
    assert f"rhnpassword={RHN_PASSWORD}" in create["argv"]


# -- unit level: naming, redaction, extractor ---------------------------------------------------


def _lineage(task: Any, moment: str = "start") -> Any:
    method = {
        "start": task.get_openlineage_facets_on_start,
        "complete": lambda: task.get_openlineage_facets_on_complete(None),
        "failure": lambda: task.get_openlineage_facets_on_failure(None),
    }[moment]
    return method()


def test_public_params_uses_the_hooks_redaction_at_every_depth() -> None:
    from airflow_llm_provider.operators.qubinode import public_params, secret_values

    values = {
        "memory": 4096,
        "disks": [20],
        "admin_password": "p1",
        "cloud": {"api_key": "k1", "region": "eu", "items": [{"token": "t1"}]},
        "rhn_auth": {"user": "u", "pass": "p2"},
    }
    assert public_params(values) == {
        "admin_password": "***",
        "cloud": {"api_key": "***", "items": [{"token": "***"}], "region": "eu"},
        "disks": [20],
        "memory": 4096,
        "rhn_auth": "***",
    }
    values.update({"admin_password": "p1-long", "cloud": {"api_key": "k1-long", "items": [{"token": "t1"}]}})
    # as text, and (like Airflow's masker) not those shorter than 5 characters
    assert sorted(secret_values(values)) == sorted(['{"user": "u", "pass": "p2"}', "k1-long", "p1-long"])
    assert public_params(None) == {} and secret_values({}) == []


def test_namespaces_per_host_and_client(airflow_conn: Any) -> None:
    from airflow_llm_provider.lineage.qubinode import resolve_target

    airflow_conn("qb_remote", {"conn_type": "qubinode", "host": "HV1.Example.com", "port": 2222})
    airflow_conn("qb_local", {"conn_type": "qubinode", "extra": {"mode": "local", "kcli_client": "gcp"}})
    airflow_conn("qb_loop", {"conn_type": "qubinode", "host": "localhost"})
    assert resolve_target("qb_remote").namespace == "kcli://hv1.example.com"
    assert resolve_target("qb_remote", "azure").namespace == "kcli://azure"
    assert resolve_target("qb_remote", "azure").host_namespace == "kcli://hv1.example.com"
    local = resolve_target("qb_local")
    assert (local.namespace, local.host_namespace) == ("kcli://gcp", HOST_NS)
    assert resolve_target("qb_loop").namespace == HOST_NS
    assert resolve_target("qb_missing").namespace == "kcli://qb_missing"  # a warning, not an error


def test_every_operator_start_lineage(airflow_conn: Any) -> None:
    from openlineage.client.serde import Serde

    from airflow_llm_provider.operators.qubinode import (
        QubinodeAnsiblePlaybookOperator,
        QubinodeDeleteVMOperator,
        QubinodeKubeOperator,
        QubinodePlanOperator,
        QubinodeVMActionOperator,
    )

    airflow_conn(
        "qb_unit",
        {
            "conn_type": "qubinode",
            "host": "hv1",
            "password": SSH_PASSWORD,
            "extra": {"private_key": "KEY-SECRET", "navigator_dir": "/opt/nav", "kcli_client": "kvm2"},
        },
    )
    common = {"qubinode_conn_id": "qb_unit"}
    plan = QubinodePlanOperator(
        task_id="p",
        plan="lab",
        url="https://bot:gh-SECRET@example.com/plans/lab.yml?token=q-SECRET",
        **common,
    )
    (dataset,) = _lineage(plan).outputs
    assert (dataset.namespace, dataset.name) == ("kcli://kvm2", "plan/lab")
    assert dataset.facets["airflowLlm_qubinodeResource"].source == "https://example.com/plans/lab.yml"

    kube = QubinodeKubeOperator(
        task_id="k",
        cluster="ocp1",
        kind="openshift",
        paramfile="/root/ocp.yml",
        kcli_params={"workers": 2},
        **common,
    )
    kube._lineage_result = {"cluster": "ocp1", "type": "openshift", "vms": ["ocp1-ctlplane-0"]}
    lineage = _lineage(kube, "complete")
    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        ("kcli://kvm2", "kube/ocp1"),
        ("kcli://kvm2", "vm/ocp1-ctlplane-0"),
    ]
    facet = lineage.outputs[0].facets["airflowLlm_qubinodeResource"]
    assert (facet.kind, facet.clusterType, facet.paramfile, facet.params, facet.status, facet.vms) == (
        "cluster",
        "openshift",
        "/root/ocp.yml",
        {"workers": 2},
        "created",
        ["ocp1-ctlplane-0"],
    )
    drop = QubinodeKubeOperator(task_id="k2", cluster="ocp1", action="delete", **common)
    (dropped,) = _lineage(drop).outputs
    assert dropped.facets["lifecycleStateChange"].lifecycleStateChange.value == "DROP"

    stop = QubinodeVMActionOperator(task_id="s", vm_name="web", action="stop", **common)
    stop._lineage_result = {"name": "web", "status": "down", "action": "stop"}
    (vm,) = _lineage(stop, "complete").outputs
    assert (vm.name, vm.facets["airflowLlm_qubinodeResource"].status) == ("vm/web", "down")
    assert "lifecycleStateChange" not in vm.facets

    playbook = QubinodeAnsiblePlaybookOperator(
        task_id="pb",
        playbook="playbooks/../site.yml",
        inventory="inv/lab",
        extra_vars={"vault_pass": "x"},
        **common,
    )
    (book,) = _lineage(playbook).outputs
    assert (book.namespace, book.name) == ("kcli://hv1", "playbook/opt/nav/site.yml")  # host, not client
    assert book.facets["airflowLlm_qubinodeResource"].params == {"vault_pass": "***"}

    delete = QubinodeDeleteVMOperator(task_id="d", vm_name="web", **common)
    delete._lineage_result = {"name": "web", "deleted": False}
    (gone,) = _lineage(delete, "complete").outputs
    assert gone.facets["airflowLlm_qubinodeResource"].status == "absent"

    for task in (plan, kube, drop, stop, playbook, delete):
        for moment in ("start", "complete", "failure"):
            text = Serde.to_json(_lineage(task, moment))
            assert "SECRET" not in text and SSH_PASSWORD not in text


def test_failure_facet_scrubs_secret_values_and_keeps_inlets(airflow_conn: Any) -> None:
    from airflow.providers.common.compat.assets import Asset

    from airflow_llm_provider.operators.qubinode import QubinodeCreateVMOperator

    airflow_conn("qb_unit", {"conn_type": "qubinode", "host": "hv1"})
    task = QubinodeCreateVMOperator(
        task_id="c",
        qubinode_conn_id="qb_unit",
        vm_name="web",
        image="img",
        kcli_params={"rhnpassword": RHN_PASSWORD},
        outlets=[Asset("file:///srv/inventory/web.ini")],
    )
    task._lineage_error = f"kcli said: bad password {RHN_PASSWORD}"
    lineage = _lineage(task, "failure")
    error = lineage.run_facets["errorMessage"]
    assert (error.message, error.programmingLanguage, error.stackTrace) == (
        "kcli said: bad password ***",
        "python",
        None,
    )
    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        ("kcli://hv1", "vm/web"),
        ("file", "/srv/inventory/web.ini"),
    ]
    assert "errorMessage" not in _lineage(task, "start").run_facets


def test_facet_matches_its_shipped_schema(airflow_conn: Any) -> None:
    import jsonschema
    from openlineage.client.serde import Serde

    from airflow_llm_provider.lineage.qubinode import QubinodeResourceDatasetFacet

    schemas = Path(__file__).resolve().parent.parent / "airflow_llm_provider" / "lineage" / "schemas"
    document = json.loads((schemas / "QubinodeResourceDatasetFacet.json").read_text())
    jsonschema.Draft202012Validator.check_schema(document)
    own_part = document["$defs"]["QubinodeResourceDatasetFacet"]["allOf"][1]
    facet = QubinodeResourceDatasetFacet(
        kind="cluster", action="create", kcliClient="aws", clusterType="eks", params={"a": 1}, vms=["x"]
    )
    jsonschema.validate(json.loads(Serde.to_json(facet)), own_part)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"kind": "bucket"}, own_part)


@pytest.fixture
def registered_extractor(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from airflow.providers.openlineage import conf

    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__EXTRACTORS", EXTRACTOR)
    clear = getattr(conf.custom_extractors, "cache_clear", lambda: None)
    clear()
    yield
    clear()


def test_extractor_registered_through_the_config_calls_the_methods(
    registered_extractor: None, airflow_conn: Any
) -> None:
    from airflow.providers.common.compat.sdk import DAG
    from airflow.providers.openlineage.extractors.manager import ExtractorManager

    from airflow_llm_provider.lineage.qubinode_extractors import QUBINODE_TASK_TYPES, QubinodeExtractor
    from airflow_llm_provider.operators import qubinode as ops
    from airflow_llm_provider.sensors.qubinode import QubinodeVMSensor

    airflow_conn("qb_unit", {"conn_type": "qubinode", "host": "hv1"})
    common = {"qubinode_conn_id": "qb_unit"}
    with DAG("qb_extractor", schedule=None):
        tasks = [
            ops.QubinodeCreateVMOperator(task_id="c", vm_name="a", image="i", **common),
            ops.QubinodeDeleteVMOperator(task_id="d", vm_name="a", **common),
            ops.QubinodeVMActionOperator(task_id="s", vm_name="a", action="start", **common),
            ops.QubinodePlanOperator(task_id="p", plan="lab", plan_file="/x.yml", **common),
            ops.QubinodeKubeOperator(task_id="k", cluster="c1", **common),
            ops.QubinodeDeployComponentOperator(task_id="comp", component="x", **common),
            ops.QubinodeAnsiblePlaybookOperator(task_id="pb", playbook="/p.yml", **common),
            QubinodeVMSensor(task_id="w", vm_name="a", **common),
        ]
    assert sorted(t.task_type for t in tasks) == sorted(QUBINODE_TASK_TYPES)
    manager = ExtractorManager()
    for task in tasks:
        assert manager.get_extractor_class(task) is QubinodeExtractor
        extractor = QubinodeExtractor(task)
        assert extractor.extract() == task.get_openlineage_facets_on_start()
        assert extractor.extract_on_complete(None) == task.get_openlineage_facets_on_complete(None)
        assert extractor.extract_on_failure(None) == task.get_openlineage_facets_on_failure(None)


def test_qubinode_modules_do_not_import_openlineage() -> None:
    heavy = ("openlineage", "airflow.providers.openlineage.extractors", "airflow_llm_provider.lineage")
    code = (
        "import sys, airflow_llm_provider.operators.qubinode, airflow_llm_provider.sensors.qubinode; "
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))"
    )
    env = {**os.environ, "AIRFLOW__OPENLINEAGE__DISABLED": "True"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.strip().splitlines()[-1] == "[]"
