"""The provider's single registry, read by Airflow's ProvidersManager through our entry point.

Every hook, operator, connection type, plugin and config option we ship is declared here once;
``airflow providers get airflow-llm-provider --full`` prints it back.
"""

from __future__ import annotations

import copy
from typing import Any

from airflow_llm_provider import __version__

INTEGRATION_LLM = "LLM (pydantic-ai)"
INTEGRATION_QUBINODE = "Qubinode"
DOCS_URL = "https://github.com/airflow-llm-provider/airflow-llm-provider/tree/main/docs"


def get_provider_info() -> dict[str, Any]:
    return {
        # Must equal the canonical distribution name, or Airflow refuses the provider.
        "package-name": "airflow-llm-provider",
        "name": "LLM Provider",
        "description": (
            "LLM cascades on Airflow with cost control, Qubinode and multi-cloud deployments, "
            "a caching Vault secrets backend and OpenLineage facets."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION_LLM,
                "external-doc-url": f"{DOCS_URL}/llm.md",
                "tags": ["ai"],
            },
            {
                "integration-name": INTEGRATION_QUBINODE,
                "external-doc-url": f"{DOCS_URL}/qubinode.md",
                "tags": ["software"],
            },
        ],
        "hooks": [
            {
                "integration-name": INTEGRATION_LLM,
                "python-modules": ["airflow_llm_provider.hooks.llm"],
            },
            {
                "integration-name": INTEGRATION_QUBINODE,
                "python-modules": ["airflow_llm_provider.hooks.qubinode"],
            },
        ],
        "operators": [
            {
                "integration-name": INTEGRATION_LLM,
                "python-modules": [
                    "airflow_llm_provider.operators.cascade",
                    "airflow_llm_provider.operators.cascade_phase",
                ],
            },
            {
                "integration-name": INTEGRATION_QUBINODE,
                "python-modules": ["airflow_llm_provider.operators.qubinode"],
            },
        ],
        "sensors": [
            {
                "integration-name": INTEGRATION_QUBINODE,
                "python-modules": ["airflow_llm_provider.sensors.qubinode"],
            },
        ],
        "triggers": [
            {
                "integration-name": INTEGRATION_LLM,
                "python-modules": ["airflow_llm_provider.triggers.signal"],
            },
            {
                "integration-name": INTEGRATION_QUBINODE,
                "python-modules": ["airflow_llm_provider.triggers.qubinode"],
            },
        ],
        "secrets-backends": ["airflow_llm_provider.secrets.vault.VaultBackend"],
        "task-decorators": [
            {"name": "cascade", "class-name": "airflow_llm_provider.decorators.cascade.cascade_task"},
        ],
        "connection-types": [copy.deepcopy(QUBINODE_CONNECTION_TYPE)],
        "plugins": [
            {
                "name": "llm_provider",
                "plugin-class": "airflow_llm_provider.plugins.llm_plugin.LLMProviderPlugin",
            },
        ],
        "extra-links": ["airflow_llm_provider.operators.links.CascadeArtifactsLink"],
        "config": {
            "llm_provider": {
                "description": "Settings of airflow-llm-provider.",
                "options": {
                    "default_llm_conn_id": {
                        "description": (
                            "Connection used by LLM phases that name none. Of type pydanticai "
                            "(apache-airflow-providers-common-ai), shared with its operators."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "my_openai",
                        "default": "pydanticai_default",
                    },
                    "test_model_fallback": {
                        "description": (
                            "When the LLM connection does not exist, use pydantic-ai's offline test "
                            "model (synthetic answers, logged as a WARNING) instead of failing. Meant "
                            "for trying the example DAGs; set to False in production."
                        ),
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "False",
                        "default": "True",
                    },
                    "model_map": {
                        "description": (
                            "Where cascade model ids go, as a JSON object of id -> pydantic-ai id. "
                            "Unmapped Windlass ids (provider/model, e.g. anthropic/claude-sonnet-4) "
                            "are sent as the model name on the cascade's connection, as Windlass "
                            "sends them to OpenRouter. A key ending in * maps a prefix."
                        ),
                        "version_added": "0.2.0",
                        "type": "string",
                        "example": '{"anthropic/*": "openai-chat:gpt-4o-mini"}',
                        "default": "",
                    },
                    "tool_path": {
                        "description": (
                            "More folders (separated by the OS path separator) searched for tool and "
                            "validator cascades by cascade_id, after the cascade's own folder and its "
                            "sibling tackle/ and cascades/ folders."
                        ),
                        "version_added": "0.2.0",
                        "type": "string",
                        "example": "/opt/airflow/tackle",
                        "default": "",
                    },
                    "ledger_conn_id": {
                        "description": (
                            "A postgres connection whose database holds the cost ledger (table "
                            "llm_cost_ledger, created on first use). Empty: a SQLite file at "
                            "ledger_path, for single-machine deployments."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "llm_ledger",
                        "default": "",
                    },
                    "ledger_enabled": {
                        "description": (
                            "Record every LLM call of every cascade task in the cost ledger. Shared "
                            "budgets need it and turn it on regardless."
                        ),
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "False",
                        "default": "True",
                    },
                    "budgets": {
                        "description": (
                            "Shared LLM budgets for every cascade task of this deployment, as a JSON "
                            'list, e.g. [{"scope": "tag_day", "tag": "team-a", "max_cost_usd": 20}]. '
                            "Scopes: dag_run, dag_day, tag_day. Tasks add their own with budgets=."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": '[{"scope": "dag_day", "max_cost_usd": 5, "warn_at": 0.8}]',
                        "default": "",
                    },
                    "alert_slack_conn_id": {
                        "description": (
                            "Slack connection (slackwebhook or slack) for budget threshold and breach "
                            "alerts. Empty: alerts go to the task log only."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "slack_llm_alerts",
                        "default": "",
                    },
                    "alert_slack_channel": {
                        "description": "Channel for alerts through a Slack API (slack) connection.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "#llm-costs",
                        "default": "",
                    },
                    "ledger_path": {
                        "description": (
                            "The SQLite cost ledger used when ledger_conn_id is empty. Default: "
                            "llm_cost_ledger.db in AIRFLOW_HOME."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/var/lib/airflow/llm_cost_ledger.db",
                        "default": "",
                    },
                    **RUNTIME_LIMIT_OPTIONS,
                    **LOAD_LIMIT_OPTIONS,
                    "allowed_python_tools": {
                        "description": "Comma-separated module prefixes whose functions cascades may "
                        "call as python: tools, besides modules in the dags folder or the cascade's own "
                        "folder and this provider's. '*' allows any module (cascade files are then as "
                        "powerful as DAG files). See docs/security.md.",
                        "version_added": "0.2.0",
                        "type": "string",
                        "example": "my_company.llm_tools,string.capwords",
                        "default": "",
                    },
                    "artifacts_dir": {
                        "description": "Folder of the cascade artifacts store (charts, HTML artifacts "
                        "of create_artifact/show_ui; a SQLite file). Workers write it and the 'Cascade "
                        "artifacts' page reads it, so both must see the same folder. Empty: "
                        "$AIRFLOW_LLM_ARTIFACTS_DIR, else an 'artifacts' folder beside the phase cache.",
                        "version_added": "0.2.0",
                        "type": "string",
                        "example": "/shared/airflow/llm-artifacts",
                        "default": "",
                    },
                    "code_tool_max_timeout": {
                        "description": "Upper bound, in seconds, on the timeout a cascade or a model "
                        "may give linux_shell (Windlass's argument); the command is killed with "
                        "everything it started when it is reached.",
                        "version_added": "0.2.0",
                        "type": "float",
                        "example": "120",
                        "default": "300",
                    },
                    "allow_unsandboxed_code": {
                        "description": "DANGEROUS. Let cascades run code a model writes (run_code, "
                        "linux_shell, python_data called by a model) and linux_shell_dangerous without "
                        "the bubblewrap sandbox, on the worker itself with only resource limits. Off: such "
                        "tools are refused where bubblewrap cannot run. See docs/security.md.",
                        "version_added": "0.2.0",
                        "type": "boolean",
                        "example": "False",
                        "default": "False",
                    },
                },
            },
        },
    }


def _limit(description: str, kind: str, default: str, example: str) -> dict[str, str]:
    return {
        "description": description,
        "version_added": "0.2.0",
        "type": kind,
        "example": example,
        "default": default,
    }


# Runtime resource limits of cascades (cascades/limits.py reads them; a test keeps both in step).
RUNTIME_LIMIT_OPTIONS: dict[str, dict[str, str]] = {
    "max_soundings": _limit(
        "Most soundings of a phase or cascade (soundings.factor, the sum of a models map's factors, "
        "reforge steps and factor_per_step). A literal over it fails validation; a templated one fails "
        "the phase when it renders.",
        "integer",
        "20",
        "50",
    ),
    "max_map_items": _limit(
        "Most items of one map_over fan-out in a cascade run; more fails the phase before any item runs.",
        "integer",
        "1024",
        "5000",
    ),
    "max_sub_cascade_runs": _limit(
        "Most child cascade runs (sub_cascades, async_cascades, tool: cascade:, cascades in tackle) one "
        "run and all its descendants start together; the next one fails its phase.",
        "integer",
        "100",
        "500",
    ),
    "llm_phase_timeout": _limit(
        "Seconds an LLM phase may take (turns, attempts, soundings, sub-cascades) when it sets no "
        "timeout of its own.",
        "float",
        "900",
        "1800",
    ),
    "llm_request_timeout": _limit(
        "Seconds one model request may take before it fails (and is retried by the client). The "
        "connection's extra.timeout overrides it.",
        "float",
        "120",
        "300",
    ),
    "max_reply_chars": _limit(
        "Characters of one output, input, item, state or conversation block put into a prompt; "
        "longer text is cut with a marker saying so.",
        "integer",
        "262144",
        "1048576",
    ),
    "template_max_output_chars": _limit(
        "Characters one cascade template may render, and the size of any one value it builds.",
        "integer",
        "1048576",
        "4194304",
    ),
    "template_max_operations": _limit(
        "Loop iterations, calls, filters and operators of one template rendering.",
        "integer",
        "1000000",
        "5000000",
    ),
    "template_max_allocated_chars": _limit(
        "Characters of all strings, lists and output one template rendering builds, added up.",
        "integer",
        "33554432",
        "134217728",
    ),
    "template_max_int_bits": _limit(
        "Bits of an integer a cascade template writes or computes.", "integer", "4096", "8192"
    ),
    "template_max_seconds": _limit("Wall-clock seconds of one template rendering.", "float", "10", "30"),
}


# Bounds on reading a cascade file (cascades/limits.py LoadLimits; a test keeps both in step).
LOAD_LIMIT_OPTIONS: dict[str, dict[str, str]] = {
    "max_cascade_file_bytes": _limit(
        "Largest cascade file read (bytes); a larger one is refused unread.", "integer", "1048576", "4194304"
    ),
    "max_cascade_nodes": _limit(
        "Most values in a cascade document once YAML aliases are expanded (stops alias bombs).",
        "integer",
        "100000",
        "200000",
    ),
    "max_cascade_depth": _limit("Most nesting levels of a cascade document.", "integer", "64", "128"),
    "max_cascade_string_chars": _limit(
        "Most characters in one string of a cascade file (long prompts belong in an @file).",
        "integer",
        "262144",
        "1048576",
    ),
    "max_cascade_number_digits": _limit(
        "Most digits of one number in a cascade file.", "integer", "100", "200"
    ),
    "max_cascade_phases": _limit("Most phases in one cascade.", "integer", "500", "1000"),
}


# The qubinode connection form. Declared here, where Airflow >= 3.2 reads it; QubinodeHook builds
# its Airflow 2 form widgets from the same dicts, so the two never drift.
QUBINODE_CONN_FIELDS: dict[str, dict[str, Any]] = {
    "mode": {
        "label": "Mode",
        "schema": {"type": ["string", "null"], "enum": ["ssh", "local"], "default": "ssh"},
        "description": "ssh: kcli on the host over SSH (default); local: on the worker.",
    },
    "ssh_conn_id": {
        "label": "SSH connection id",
        "schema": {"type": ["string", "null"]},
        "description": "Optional. Take host, login, port and keys from this ssh connection.",
    },
    "kcli_path": {
        "label": "kcli path",
        "schema": {"type": ["string", "null"], "default": "kcli"},
        "description": "kcli on the host: a name on PATH (default kcli) or a full path.",
    },
    "kcli_client": {
        "label": "kcli client",
        "schema": {"type": ["string", "null"]},
        "description": "Optional kcli -C client: a remote KVM host, aws, gcp, azure...",
    },
    "use_sudo": {
        "label": "Use sudo",
        "schema": {"type": ["string", "null"], "enum": ["auto", "true", "false"], "default": "auto"},
        "description": "auto (default): sudo -n unless the user is root; true; false.",
    },
    "key_file": {
        "label": "Private key file",
        "schema": {"type": ["string", "null"]},
        "description": "SSH private key file (or the key itself in extra private_key).",
    },
    "private_key_passphrase": {
        "label": "Private key passphrase",
        "schema": {"type": ["string", "null"], "format": "password"},
        "description": "Optional passphrase of key_file / private_key.",
    },
    "host_key_policy": {
        "label": "Host key policy",
        "schema": {"type": ["string", "null"], "enum": ["verify", "accept_new"], "default": "verify"},
        "description": "verify: unknown host key is an error; accept_new: trust first use.",
    },
    "known_hosts": {
        "label": "known_hosts file",
        "schema": {"type": ["string", "null"]},
        "description": "Optional. Host keys to verify against (default ~/.ssh/known_hosts).",
    },
    "host_key": {
        "label": "Host key",
        "schema": {"type": ["string", "null"]},
        "description": "Optional. Pinned host public key, e.g. 'ssh-ed25519 AAAA...'.",
    },
    "pipelines_dir": {
        "label": "Pipelines directory",
        "schema": {"type": ["string", "null"]},
        "description": "Optional. qubinode-pipelines checkout on the host.",
    },
    "navigator_dir": {
        "label": "Navigator directory",
        "schema": {"type": ["string", "null"]},
        "description": "Optional. qubinode_navigator checkout on the host.",
    },
    "conn_timeout": {
        "label": "Connect timeout (s)",
        "schema": {"type": ["integer", "null"], "default": 10},
        "description": "Seconds to establish the SSH connection (default 10).",
    },
    "cmd_timeout": {
        "label": "Command timeout (s)",
        "schema": {"type": ["integer", "null"]},
        "description": "Optional. Seconds one kcli command may run (default: no limit).",
    },
}

QUBINODE_UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema"],
    "relabeling": {
        "host": "Hypervisor host",
        "login": "SSH user",
        "password": "SSH password (optional)",
        "port": "SSH port",
    },
    "placeholders": {
        "host": "hypervisor.example.com",
        "login": "root",
        "port": "22",
        "mode": "ssh",
        "ssh_conn_id": "localhost_ssh",
        "kcli_path": "kcli",
        "kcli_client": "aws",
        "use_sudo": "auto",
        "key_file": "/home/airflow/.ssh/id_ed25519",
        "host_key_policy": "verify",
        "known_hosts": "~/.ssh/known_hosts",
        "host_key": "ssh-ed25519 AAAA...",
        "pipelines_dir": "/opt/qubinode-pipelines",
        "navigator_dir": "/opt/qubinode_navigator",
        "conn_timeout": "10",
        "cmd_timeout": "3600",
    },
}

QUBINODE_CONNECTION_TYPE: dict[str, Any] = {
    "hook-class-name": "airflow_llm_provider.hooks.qubinode.QubinodeHook",
    "connection-type": "qubinode",
    "hook-name": "Qubinode (kcli)",
    "ui-field-behaviour": QUBINODE_UI_FIELD_BEHAVIOUR,
    "conn-fields": QUBINODE_CONN_FIELDS,
}
