"""Deployment specs: one YAML file naming VMs on several targets (a Qubinode/KVM host, and AWS, GCP or
Azure through kcli clients), parsed strictly with ``file:line: field: message`` errors.

Pure: no Airflow import (the DAG factory in ``factory.py`` is the adapter). Parsing, line tracking and
the pydantic-error mapping are the cascade loader's, reused as they are.

Example::

    deployment: web-tier
    conn_id: qubinode_default        # the host where kcli runs (a `qubinode` connection)
    defaults:
      image: centos9stream
      params: {memory: 2048, numcpus: 2}
    wait: {require_ip: true, deferrable: true, timeout_minutes: 30}
    targets:
      - name: lab
        provider: qubinode           # kcli's default client on that host
        vms: [web-1, web-2]
      - name: aws
        provider: aws                # kcli -C aws (client "aws" in ~/.kcli/config.yml)
        image: ami-0123456789abcdef0
        params: {flavor: t3.medium}
        vms: [{name: web-aws-1, params: {flavor: t3.large}}]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from airflow_llm_provider.cascades.errors import CascadeValidationError, ValidationIssue
from airflow_llm_provider.deployments.kcli_args import params_problems, value_problem

PROVIDERS = ("qubinode", "kvm", "aws", "gcp", "azure")
CLOUDS = ("aws", "gcp", "azure")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,100}$"


class DeploymentSpecError(CascadeValidationError):
    """Every problem of a deployment spec, each as ``file:line: field: message``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VMDefaults(_Strict):
    image: str | None = None
    profile: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    # kcli's argument rules (kcli_args.py) at parse time: a bad value is a DAG import error naming
    # file, line and field, not a task failure on the hypervisor hours later.
    @field_validator("image", "profile")
    @classmethod
    def _kcli_value(cls, value: str | None) -> str | None:
        problem = None if value is None else value_problem(value)
        if problem is not None:
            raise ValueError(f"{value!a} {problem}")
        return value

    @field_validator("params")
    @classmethod
    def _kcli_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        problems = params_problems(value, "params")
        if problems:
            raise ValueError("; ".join(problems))
        return value


class VMEntry(VMDefaults):
    name: str = Field(pattern=NAME_PATTERN)


class WaitSpec(_Strict):
    require_ip: bool = True
    ssh_port_check: bool = False
    deferrable: bool = True
    poke_interval_seconds: float = Field(default=30, gt=0)
    timeout_minutes: float = Field(default=30, gt=0)


class Target(VMDefaults):
    name: str = Field(pattern=ID_PATTERN)
    provider: Literal["qubinode", "kvm", "aws", "gcp", "azure"]
    client: str | None = Field(default=None, pattern=NAME_PATTERN)
    conn_id: str | None = Field(default=None, pattern=ID_PATTERN)
    vms: list[str | VMEntry] = Field(min_length=1)

    @property
    def kcli_client(self) -> str | None:
        """kcli ``-C``: explicit, else the cloud's name; KVM targets use the connection's default."""
        if self.client:
            return self.client
        return self.provider if self.provider in CLOUDS else None


class DeploymentSpec(_Strict):
    deployment: str = Field(pattern=ID_PATTERN)
    description: str | None = None
    conn_id: str = Field(default="qubinode_default", pattern=ID_PATTERN)
    defaults: VMDefaults = Field(default_factory=VMDefaults)
    wait: WaitSpec = Field(default_factory=WaitSpec)
    targets: list[Target] = Field(min_length=1)

    def vm_items(self) -> list[dict[str, Any]]:
        """One JSON-safe dict per VM: target, provider, connection, kcli client, image/profile, params."""
        items = []
        for target in self.targets:
            for entry in target.vms:
                vm = _entry(entry)
                image, profile = _source(self.defaults, target, vm)
                items.append(
                    {
                        "target": target.name,
                        "provider": target.provider,
                        "conn_id": target.conn_id or self.conn_id,
                        "kcli_client": target.kcli_client,
                        "vm_name": vm.name,
                        "image": image,
                        "profile": profile,
                        "params": {**self.defaults.params, **target.params, **vm.params},
                    }
                )
        return items


def _entry(entry: str | VMEntry) -> VMEntry:
    """A VM given as a bare name is a VM entry with that name (its name is checked separately)."""
    return (
        VMEntry.model_construct(name=entry, image=None, profile=None, params={})
        if isinstance(entry, str)
        else entry
    )


def _source(*layers: VMDefaults) -> tuple[str | None, str | None]:
    """The most specific layer that names an image or a profile wins (both at once is an error)."""
    image = profile = None
    for layer in layers:
        if layer.image or layer.profile:
            image, profile = layer.image, layer.profile
    return image, profile


def _semantic_issues(spec: DeploymentSpec) -> list[tuple[tuple[str | int, ...], str]]:
    issues: list[tuple[tuple[str | int, ...], str]] = []
    seen_targets: dict[str, int] = {}
    seen_vms: dict[tuple[str, str | None, str], str] = {}
    if spec.defaults.image and spec.defaults.profile:
        issues.append((("defaults",), "set image or profile, not both"))
    for t_index, target in enumerate(spec.targets):
        if target.name in seen_targets:
            issues.append((("targets", t_index, "name"), f"duplicate target name {target.name!r}"))
        seen_targets[target.name] = t_index
        if target.image and target.profile:
            issues.append((("targets", t_index), "set image or profile, not both"))
        for v_index, entry in enumerate(target.vms):
            path: tuple[str | int, ...] = ("targets", t_index, "vms", v_index)
            vm = _entry(entry)
            if isinstance(entry, str) and not _valid_name(entry):
                issues.append((path, f"invalid VM name {entry!r} (letters, digits, '.', '_', '-')"))
            if vm.image and vm.profile:
                issues.append((path, "set image or profile, not both"))
            image, profile = _source(spec.defaults, target, vm)
            if not image and not profile:
                issues.append(
                    (path, f"VM {vm.name!r} has no image or profile (here, in the target or in defaults)")
                )
            key = (target.conn_id or spec.conn_id, target.kcli_client, vm.name)
            if key in seen_vms:
                issues.append(
                    (path, f"VM {vm.name!r} is also in target {seen_vms[key]!r} on the same host and client")
                )
            seen_vms.setdefault(key, target.name)
    return issues


def _valid_name(name: str) -> bool:
    import re

    return re.match(NAME_PATTERN, name) is not None


def check_deployment_spec(
    source: str | Path | Mapping[str, Any],
) -> tuple[DeploymentSpec | None, list[ValidationIssue]]:
    """Parse and validate; return the spec (or None) and every issue found."""
    from pydantic import ValidationError

    # The cascade loader's machinery: YAML with line numbers, unknown-key hints, pydantic mapping.
    from airflow_llm_provider.cascades.loader import _prepass, _report_pydantic
    from airflow_llm_provider.cascades.parsing import Collector, parse_document

    if isinstance(source, Mapping):
        collector = Collector("<dict>")
        data: Any = dict(source)
    else:
        path = Path(source)
        collector = Collector(str(path))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            collector.issue((), f"cannot read file: {exc}")
            return None, collector.issues
        data = parse_document(text, path.suffix.lower(), collector)
        if collector.issues:
            return None, collector.issues
    if not isinstance(data, dict):
        kind = "an empty document" if data is None else f"a {type(data).__name__}"
        collector.issue(
            (), f"a deployment spec must be a mapping with `deployment` and `targets`, got {kind}"
        )
        return None, collector.issues
    cleaned = _prepass(data, DeploymentSpec, (), collector)
    try:
        spec = DeploymentSpec.model_validate(cleaned)
    except ValidationError as exc:
        _report_pydantic(exc, cleaned, collector)
        return None, collector.issues
    for where, message in _semantic_issues(spec):
        collector.issue(where, message)
    return (None if collector.issues else spec), collector.issues


def load_deployment_spec(source: str | Path | Mapping[str, Any]) -> DeploymentSpec:
    """Parse a deployment spec strictly.

    :raises DeploymentSpecError: listing every problem with file, line and field.
    """
    spec, issues = check_deployment_spec(source)
    if spec is None:
        raise DeploymentSpecError(issues)
    return spec
