"""Vault requests and lookup latency: our VaultBackend vs the hashicorp provider's, same OpenBao.

One OpenBao dev server (its file audit device counts what each backend really sent), one AppRole
with a read-only policy, one connection and 5 variables. Each backend, built in this process as a
task process builds it, then looks up the connection 100 times and each variable 100 times,
interleaved. Requests are counted from the audit log between a backend's first and last lookup.

Latency: the median of one cached ``get_variable`` / ``get_conn_value`` call on ours (after the
first read), and of one lookup on the stock backend (which has no cache: a Vault round trip).

Goals (issue 5): the connection's 100 lookups cost ours <= 2 requests (login + one read) against
>= 100 for the stock backend; every secret costs ours one read however often it is looked up;
a cached lookup takes <= 50 µs.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the OpenBao launcher is the test bed's

from _common import arguments, finish, machine  # noqa: E402

from tests.fixtures._proc import stop_process  # noqa: E402
from tests.fixtures.vault import start_openbao  # noqa: E402

LOOKUPS = 100
VARIABLES = [f"bench_var_{i}" for i in range(5)]
CONNECTION = "bench_db"
POLICY = 'path "secret/data/*" { capabilities = ["read"] }\n'


def prepare(server) -> dict[str, str]:
    root = server.client()
    root.sys.create_or_update_policy(name="bench-read", policy=POLICY)
    root.sys.enable_auth_method("approle")
    root.auth.approle.create_or_update_approle("bench", token_policies=["bench-read"], token_ttl="1h")
    kv = root.secrets.kv.v2
    kv.create_or_update_secret(
        path=f"connections/{CONNECTION}", secret={"conn_uri": "postgresql://app:s3cret@db:5432/sales"}
    )
    for name in VARIABLES:
        kv.create_or_update_secret(path=f"variables/{name}", secret={"value": f"value of {name}"})
    return {
        "url": server.url,
        "auth_type": "approle",
        "role_id": root.auth.approle.read_role_id("bench")["data"]["role_id"],
        "secret_id": root.auth.approle.generate_secret_id("bench")["data"]["secret_id"],
    }


def requests_by_kind(server, since: int) -> dict[str, int]:
    counts = {"login": 0, "read": 0, "other": 0}
    for entry in server.audit_entries()[since:]:
        if entry.get("type") != "request":
            continue
        path = entry["request"].get("path", "")
        kind = "login" if path.startswith("auth/") else "read" if path.startswith("secret/") else "other"
        counts[kind] += 1
    counts["total"] = sum(counts.values())
    return counts


def workload(backend) -> None:
    for _ in range(LOOKUPS):
        assert backend.get_connection(CONNECTION).password == "s3cret"
        for name in VARIABLES:
            assert backend.get_variable(name) == f"value of {name}"


def per_call_us(call, repetitions: int) -> float:
    samples = []
    for _ in range(repetitions):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def warm_up_airflow() -> None:
    """The first Connection object configures SQLAlchemy's mappers (~1 s): Airflow's one-off cost,
    which would otherwise land in whichever backend runs first."""
    from airflow.models.connection import Connection

    Connection(conn_id="warm_up", conn_type="http")


def measure(server, backend) -> dict:
    since = len(server.audit_entries())
    started = time.perf_counter()
    workload(backend)
    elapsed = time.perf_counter() - started
    return {"requests": requests_by_kind(server, since), "workload_seconds": round(elapsed, 3)}


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    # As a deployment has one; without it Airflow warns on stdout, which carries the JSON result.
    from cryptography.fernet import Fernet

    os.environ.setdefault("AIRFLOW__CORE__FERNET_KEY", Fernet.generate_key().decode())
    from airflow.providers.hashicorp.secrets.vault import VaultBackend as StockVaultBackend

    from airflow_llm_provider.secrets.vault import VaultBackend

    # Airflow logs to stdout, which carries the JSON result.
    with tempfile.TemporaryDirectory(prefix="bench-openbao-") as workdir, redirect_stdout(sys.stderr):
        server, process = start_openbao(Path(workdir))
        try:
            kwargs = prepare(server)
            warm_up_airflow()
            ours = VaultBackend(**kwargs)
            stock = StockVaultBackend(**kwargs)
            result_ours = measure(server, ours)
            result_stock = measure(server, stock)

            # Only the connection, in a fresh backend each: the "100 lookups of one connection".
            one_ours, one_stock = VaultBackend(**kwargs), StockVaultBackend(**kwargs)
            since = len(server.audit_entries())
            for _ in range(LOOKUPS):
                one_ours.get_conn_value(CONNECTION)
            connection_ours = requests_by_kind(server, since)
            since = len(server.audit_entries())
            for _ in range(LOOKUPS):
                one_stock.get_conn_value(CONNECTION)
            connection_stock = requests_by_kind(server, since)

            repetitions = max(args.repetitions, 1) * 2000
            latency = {
                "ours_cached_get_variable_us": round(
                    per_call_us(lambda: ours.get_variable(VARIABLES[0]), repetitions), 2
                ),
                "ours_cached_get_conn_value_us": round(
                    per_call_us(lambda: ours.get_conn_value(CONNECTION), repetitions), 2
                ),
                "ours_cached_get_connection_us": round(
                    per_call_us(lambda: ours.get_connection(CONNECTION), repetitions), 2
                ),
                "stock_get_variable_us": round(per_call_us(lambda: stock.get_variable(VARIABLES[0]), 200), 2),
            }
        finally:
            stop_process(process)

    distinct_secrets = 1 + len(VARIABLES)
    met = (
        connection_ours["total"] <= 2
        and connection_stock["total"] >= LOOKUPS
        and result_ours["requests"]["read"] == distinct_secrets
        and latency["ours_cached_get_variable_us"] <= 50
        and latency["ours_cached_get_conn_value_us"] <= 50
    )
    finish(
        {
            "benchmark": "vault_requests",
            "workload": f"{LOOKUPS} x (get_connection + {len(VARIABLES)} get_variable), AppRole login",
            "one_connection_100_lookups": {"ours": connection_ours, "stock": connection_stock},
            "connection_and_5_variables": {"ours": result_ours, "stock": result_stock},
            "request_ratio_stock_over_ours": round(
                result_stock["requests"]["total"] / result_ours["requests"]["total"], 1
            ),
            "latency": latency,
            "machine": machine(),
        },
        met,
        args.check,
    )


if __name__ == "__main__":
    main()
