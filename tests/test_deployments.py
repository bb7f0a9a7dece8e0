"""Deployment specs (strict parsing, file:line:field errors) and the DAGs the factory makes from them,
run with ``dag.test()`` against the stand-in kcli on two kcli clients."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pendulum
import pytest

from airflow_llm_provider.deployments import DeploymentSpecError, check_deployment_spec, load_deployment_spec
from tests.dag_loading import REPO_DAGS
from tests.support.fake_kcli import FakeKcli, install

GOOD = textwrap.dedent(
    """\
    deployment: lab-web
    conn_id: qubinode_dep
    defaults:
      image: centos9stream
      params: {memory: 1024}
    wait: {require_ip: true, deferrable: false, poke_interval_seconds: 1, timeout_minutes: 1}
    targets:
      - name: kvm
        provider: qubinode
        vms: [web-1, web-2]
      - name: cloud
        provider: aws
        image: ami-123
        params: {flavor: t3.small}
        vms:
          - name: web-aws-1
            params: {memory: 4096}
    """
)


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_spec_items_layer_defaults_target_and_vm(tmp_path: Path) -> None:
    spec = load_deployment_spec(_write(tmp_path, GOOD))
    items = spec.vm_items()
    assert [(i["target"], i["vm_name"], i["kcli_client"]) for i in items] == [
        ("kvm", "web-1", None),
        ("kvm", "web-2", None),
        ("cloud", "web-aws-1", "aws"),
    ]
    assert items[0]["image"] == "centos9stream" and items[0]["params"] == {"memory": 1024}
    assert items[2]["image"] == "ami-123"
    assert items[2]["params"] == {"memory": 4096, "flavor": "t3.small"}
    assert {i["conn_id"] for i in items} == {"qubinode_dep"}


def test_spec_example_in_dags_is_valid() -> None:
    spec = load_deployment_spec(REPO_DAGS / "deployments" / "web-tier.yaml")
    assert {t.provider for t in spec.targets} == {"qubinode", "aws", "gcp", "azure"}
    assert [t.kcli_client for t in spec.targets] == [None, "aws", "gcp", "azure-westeurope"]


def test_every_problem_is_reported_with_file_line_and_field(tmp_path: Path) -> None:
    bad = textwrap.dedent(
        """\
        deployment: lab web
        defaults:
          image: centos9stream
          profile: rhel9
        targets:
          - name: kvm
            provider: vmware
            vms: [web-1]
          - name: aws
            provider: aws
            vms:
              - name: web-1
                flavour: t3.small
          - name: kvm
            provider: qubinode
            image: x
            vms: ["bad name", web-1]
        """
    )
    path = _write(tmp_path, bad)
    with pytest.raises(DeploymentSpecError) as caught:
        load_deployment_spec(path)
    text = str(caught.value)
    print(text)
    assert f"{path}:1: deployment: String should match pattern" in text
    assert (
        f"{path}:7: targets[0].provider: Input should be 'qubinode', 'kvm', 'aws', 'gcp' or 'azure'" in text
    )
    assert (
        f"{path}:13: targets[1].vms[0].flavour: unknown key 'flavour' (did you mean 'params'?)" in text
        or (f"{path}:13: targets[1].vms[0].flavour: unknown key 'flavour'" in text)
    )


def test_semantic_errors(tmp_path: Path) -> None:
    bad = textwrap.dedent(
        """\
        deployment: lab
        defaults: {image: a, profile: b}
        targets:
          - name: kvm
            provider: kvm
            vms: [web-1]
          - name: kvm
            provider: qubinode
            vms: ["bad name", web-1]
          - name: aws
            provider: aws
            vms: [web-1]
        """
    )
    path = _write(tmp_path, bad)
    spec, issues = check_deployment_spec(path)
    assert spec is None
    text = "\n".join(str(i) for i in issues)
    assert f"{path}:2: defaults: set image or profile, not both" in text
    assert f"{path}:7: targets[1].name: duplicate target name 'kvm'" in text
    assert f"{path}:9: targets[1].vms[0]: invalid VM name 'bad name'" in text
    assert "targets[1].vms[1]: VM 'web-1' is also in target 'kvm' on the same host and client" in text
    assert "targets[2].vms" not in text  # same name on another kcli client (aws) is fine


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "deployment: x\ntargets:\n  - name: [unclosed\n")
    with pytest.raises(DeploymentSpecError, match=rf"{path}:\d+: <document>: YAML syntax error"):
        load_deployment_spec(path)
    with pytest.raises(DeploymentSpecError, match="must be a mapping"):
        load_deployment_spec(_write(tmp_path, "- a\n", "list.yaml"))


# --------------------------------------------------------------------------------------- DAGs


@pytest.fixture
def kcli(tmp_path: Path) -> FakeKcli:
    return install(tmp_path / "bin", tmp_path / "kcli-state.json")


def test_factory_dags_shape(tmp_path: Path) -> None:
    from airflow_llm_provider.deployments.factory import deployment_dags

    dags = deployment_dags(_write(tmp_path, GOOD), tags=["t"], doc_md="doc")
    assert sorted(dags) == ["deploy_lab_web", "destroy_lab_web"]
    deploy = dags["deploy_lab_web"]
    assert deploy.max_active_runs == 1 and dags["destroy_lab_web"].max_active_runs == 1
    assert sorted(deploy.task_dict) == ["create_vm", "select_vms", "select_waits", "summary", "wait_vm"]
    assert deploy.task_dict["wait_vm"].partial_kwargs["require_ip"] is True


def test_factory_fans_out_over_targets(dag_runner, airflow_conn, kcli: FakeKcli, tmp_path: Path) -> None:
    from airflow_llm_provider.deployments.factory import deployment_dags

    airflow_conn(
        "qubinode_dep", {"conn_type": "qubinode", "extra": {"mode": "local", "kcli_path": str(kcli.path)}}
    )
    dags = deployment_dags(_write(tmp_path, GOOD), tags=["t"])
    start = pendulum.datetime(2026, 2, 1, tz="UTC")

    # Only the KVM target first, as conf {"targets": [...]} asks.
    result = dag_runner(dags["deploy_lab_web"], logical_date=start, conf={"targets": ["kvm"]})
    assert result.state == "success", result.task_states
    assert sorted(kcli.vms()) == ["web-1", "web-2"] and kcli.vms("aws") == {}
    assert [vm["name"] for vm in result.xcom("summary")] == ["web-1", "web-2"]

    # Then everything: the KVM VMs exist (not created again), the AWS one is built with -C aws.
    result = dag_runner(dags["deploy_lab_web"], logical_date=start.add(days=1))
    assert result.state == "success", result.task_states
    assert sorted(kcli.vms("aws")) == ["web-aws-1"]
    creates = kcli.calls("create")
    names = [c["argv"][-1] for c in creates]  # mapped tasks of one run finish in any order
    assert sorted(names[:2]) == ["web-1", "web-2"] and names[2:] == ["web-aws-1"]
    assert creates[-1]["argv"][:2] == ["-C", "aws"]
    assert "memory=4096" in creates[-1]["argv"] and "flavor=t3.small" in creates[-1]["argv"]
    assert [result.xcom("create_vm", map_index=i)["created"] for i in range(3)] == [False, False, True]
    assert result.xcom("wait_vm", map_index=2)["ip"]

    result = dag_runner(dags["destroy_lab_web"], logical_date=start.add(days=2))
    assert result.state == "success", result.task_states
    assert kcli.vms() == {} and kcli.vms("aws") == {}


def test_unknown_target_in_conf_fails_clearly(
    dag_runner, airflow_conn, kcli: FakeKcli, tmp_path: Path
) -> None:
    from airflow_llm_provider.deployments.factory import deployment_dags

    airflow_conn(
        "qubinode_dep", {"conn_type": "qubinode", "extra": {"mode": "local", "kcli_path": str(kcli.path)}}
    )
    dags = deployment_dags(_write(tmp_path, GOOD.replace("lab-web", "lab-web2")), tags=["t"])
    result = dag_runner(dags["deploy_lab_web2"], conf={"targets": ["gpc"]})
    assert result.task_states["select_vms"] == "failed"
    assert kcli.calls("create") == []
