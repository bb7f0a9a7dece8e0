"""VaultBackend's auth methods, namespaces and token lifecycle against OpenBao's real dev server.

jwt: OpenBao verifies our RS256 tokens against the public key it is configured with. kubernetes:
OpenBao asks a Kubernetes API for a TokenReview; a small local HTTP server answers as the API
server does (the Vault side, the login and the policy are all real).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from airflow_llm_provider.secrets.vault import VaultBackend, VaultBackendError

POLICY = 'path "secret/data/*" { capabilities = ["read"] }\n'


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _enable_auth(client, method: str, path: str | None = None) -> None:
    if f"{path or method}/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method(method, path=path)


@pytest.fixture(scope="module")
def policy(vault) -> str:
    vault.client().sys.create_or_update_policy(name="airflow-auth-read", policy=POLICY)
    return "airflow-auth-read"


@pytest.fixture
def variable(vault) -> tuple[str, str]:
    key, value = _unique("auth_var"), _unique("auth_value")
    vault.client().secrets.kv.v2.create_or_update_secret(
        path=f"variables/{key}", secret={"value": value}, mount_point="secret"
    )
    return key, value


# -- configuration errors ---------------------------------------------------------------------------


def test_unknown_auth_type_lists_the_known_ones(vault):
    with pytest.raises(VaultBackendError, match=r"auth_type='kerberos'.*token, approle, userpass.*jwt"):
        VaultBackend(url=vault.url, auth_type="kerberos")


@pytest.mark.parametrize(
    ("auth_type", "missing"),
    [
        ("approle", "role_id"),
        ("userpass", "username, password"),
        ("jwt", "jwt_role, jwt_token or jwt_token_path"),
        ("kubernetes", "kubernetes_role"),
    ],
)
def test_missing_auth_parameters_fail_at_configuration(vault, auth_type, missing):
    with pytest.raises(VaultBackendError, match=rf"auth_type='{auth_type}' needs {missing}"):
        VaultBackend(url=vault.url, auth_type=auth_type)


def test_stock_only_kwargs_are_accepted_without_warning(vault, caplog):
    VaultBackend(url=vault.url, token="t", gcp_scopes="x", radius_port=1812, azure_tenant_id="t")
    assert "ignores" not in caplog.text


# -- jwt --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jwt_signer(vault, policy):
    """Configure OpenBao's jwt auth with a fresh RSA key; returns a function minting tokens."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    root = vault.client()
    _enable_auth(root, "jwt")
    root.auth.jwt.configure(jwt_validation_pubkeys=[public_pem])
    root.auth.jwt.create_role(
        "airflow-worker",
        role_type="jwt",
        user_claim="sub",
        bound_audiences=["vault"],
        token_policies=[policy],
        token_ttl="1h",
        allowed_redirect_uris=[],
    )

    def mint(subject: str = "airflow-worker", audience: str = "vault") -> str:
        now = int(time.time())
        claims = {"sub": subject, "aud": audience, "iat": now, "exp": now + 600}
        return jwt.encode(claims, key, algorithm="RS256")

    return mint


def test_jwt_login_with_token(vault, jwt_signer, variable):
    key, value = variable
    backend = VaultBackend(url=vault.url, auth_type="jwt", jwt_role="airflow-worker", jwt_token=jwt_signer())
    before = vault.request_count("auth/jwt/login")
    assert backend.get_variable(key) == value
    assert vault.request_count("auth/jwt/login") - before == 1


def test_jwt_login_with_token_path(vault, jwt_signer, variable, tmp_path):
    key, value = variable
    token_file = tmp_path / "jwt"
    token_file.write_text(jwt_signer() + "\n")
    backend = VaultBackend(
        url=vault.url, auth_type="jwt", jwt_role="airflow-worker", jwt_token_path=str(token_file)
    )
    assert backend.get_variable(key) == value


def test_jwt_with_wrong_audience_is_a_clear_error(vault, jwt_signer, variable):
    backend = VaultBackend(
        url=vault.url, auth_type="jwt", jwt_role="airflow-worker", jwt_token=jwt_signer(audience="other")
    )
    with pytest.raises(VaultBackendError, match=r"auth_type='jwt' at auth mount 'jwt' .*rejected"):
        backend.get_variable(variable[0])


def test_jwt_token_path_missing_is_a_clear_error(vault, jwt_signer, tmp_path):
    backend = VaultBackend(
        url=vault.url, auth_type="jwt", jwt_role="airflow-worker", jwt_token_path=str(tmp_path / "nope")
    )
    with pytest.raises(VaultBackendError, match=r"cannot read the jwt_token_path file .*nope"):
        backend.get_variable("anything")


# -- kubernetes -------------------------------------------------------------------------------------


class _TokenReviewAPI:
    """Answers ``POST /apis/authentication.k8s.io/v1/tokenreviews`` for one service account."""

    def __init__(self, namespace: str, service_account: str) -> None:
        self.reviews: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.reviews.append(review)
                status = {
                    "authenticated": True,
                    "user": {
                        "username": f"system:serviceaccount:{namespace}:{service_account}",
                        "uid": "uid-worker",
                        "groups": ["system:serviceaccounts"],
                    },
                    "audiences": review["spec"].get("audiences") or [],
                }
                body = json.dumps(
                    {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}
                )
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"


def _service_account_jwt(namespace: str, name: str) -> str:
    """The shape of a projected service-account token (the API server, not Vault, checks the signature)."""

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {
        "iss": "kubernetes/serviceaccount",
        "sub": f"system:serviceaccount:{namespace}:{name}",
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/service-account.name": name,
        "kubernetes.io/serviceaccount/service-account.uid": "uid-worker",
    }
    return f"{part({'alg': 'RS256', 'kid': 'k1'})}.{part(claims)}.c2lnbmF0dXJl"


@pytest.fixture(scope="module")
def kubernetes_auth(vault, policy, tmp_path_factory) -> Iterator[_TokenReviewAPI]:
    import subprocess

    workdir = tmp_path_factory.mktemp("k8s")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(workdir / "ca.key"), "-out", str(workdir / "ca.pem"),
            "-days", "1", "-subj", "/CN=kubernetes",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    api = _TokenReviewAPI("airflow", "worker")
    root = vault.client()
    _enable_auth(root, "kubernetes")
    root.auth.kubernetes.configure(
        kubernetes_host=api.url,
        kubernetes_ca_cert=(workdir / "ca.pem").read_text(),
        token_reviewer_jwt="reviewer-token",
        disable_local_ca_jwt=True,
    )
    root.auth.kubernetes.create_role(
        "airflow",
        bound_service_account_names=["worker"],
        bound_service_account_namespaces=["airflow"],
        policies=[policy],
        ttl="1h",
    )
    try:
        yield api
    finally:
        api.server.shutdown()


def test_kubernetes_login_reads_the_service_account_token(vault, kubernetes_auth, variable, tmp_path):
    key, value = variable
    token = tmp_path / "token"
    token.write_text(_service_account_jwt("airflow", "worker"))
    backend = VaultBackend(
        url=vault.url, auth_type="kubernetes", kubernetes_role="airflow", kubernetes_jwt_path=str(token)
    )
    reviews = len(kubernetes_auth.reviews)
    assert backend.get_variable(key) == value
    assert backend.get_variable(key) == value  # cached: no second login
    assert len(kubernetes_auth.reviews) - reviews == 1
    assert kubernetes_auth.reviews[-1]["spec"]["token"] == token.read_text()


def test_kubernetes_default_token_path_missing_names_it(vault, kubernetes_auth):
    backend = VaultBackend(url=vault.url, auth_type="kubernetes", kubernetes_role="airflow")
    with pytest.raises(VaultBackendError, match=r"/var/run/secrets/kubernetes.io/serviceaccount/token"):
        backend.get_variable("anything")


# -- namespaces -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def namespace(vault) -> str:
    """An OpenBao namespace with its own KV v2 mount and userpass login."""
    name = _unique("team")
    root = vault.client()
    root.adapter.post(f"/v1/sys/namespaces/{name}")
    scoped = vault.client(namespace=name)
    scoped.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    scoped.sys.create_or_update_policy(name="reader", policy=POLICY)
    scoped.sys.enable_auth_method("userpass")
    scoped.auth.userpass.create_or_update_user("ns-user", password="ns-password", policies=["reader"])
    scoped.secrets.kv.v2.create_or_update_secret(
        path="variables/ns_only", secret={"value": "inside-namespace"}, mount_point="secret"
    )
    return name


def test_namespace_reads_its_own_mount(vault, namespace):
    backend = VaultBackend(
        url=vault.url, namespace=namespace, auth_type="userpass", username="ns-user", password="ns-password"
    )
    assert backend.get_variable("ns_only") == "inside-namespace"
    outside = VaultBackend(url=vault.url, token=vault.token)
    assert outside.get_variable("ns_only") is None
    logins = [e for e in vault.audit_entries() if e["request"].get("path") == "auth/userpass/login/ns-user"]
    assert logins
    assert logins[-1]["request"]["namespace"]["path"].rstrip("/") == namespace


# -- token lifecycle --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_roles(vault, policy) -> dict[str, tuple[str, str]]:
    """AppRoles whose tokens live 3 s: a renewable service token and a non-renewable batch token."""
    root = vault.client()
    _enable_auth(root, "approle")
    roles = {}
    for name, kwargs in {
        "renewable": {"token_ttl": "3s", "token_max_ttl": "1h"},
        "batch": {"token_ttl": "3s", "token_max_ttl": "3s", "token_type": "batch"},
    }.items():
        role = f"lifecycle-{name}"
        root.auth.approle.create_or_update_approle(role, token_policies=[policy], **kwargs)
        roles[name] = (
            root.auth.approle.read_role_id(role)["data"]["role_id"],
            root.auth.approle.generate_secret_id(role)["data"]["secret_id"],
        )
    return roles


def _responses_with_error(vault, path_prefix: str) -> int:
    return sum(
        1
        for e in vault.audit_entries("response")
        if e["request"].get("path", "").startswith(path_prefix) and e.get("error")
    )


def test_token_is_renewed_before_it_expires(vault, short_roles, variable):
    key, value = variable
    role_id, secret_id = short_roles["renewable"]
    backend = VaultBackend(
        url=vault.url, auth_type="approle", role_id=role_id, secret_id=secret_id, cache_ttl_seconds=0
    )
    logins = vault.request_count("auth/approle/login")
    renewals = vault.request_count("auth/token/renew-self")
    for _ in range(4):  # 4 reads over ~6.6 s: twice the token's life, never once expired
        assert backend.get_variable(key) == value
        time.sleep(2.2)
    assert vault.request_count("auth/approle/login") - logins == 1
    assert vault.request_count("auth/token/renew-self") - renewals >= 2
    assert _responses_with_error(vault, f"secret/data/variables/{key}") == 0


def test_non_renewable_token_is_replaced_by_a_login_before_expiry(vault, short_roles, variable):
    key, value = variable
    role_id, secret_id = short_roles["batch"]
    backend = VaultBackend(
        url=vault.url, auth_type="approle", role_id=role_id, secret_id=secret_id, cache_ttl_seconds=0
    )
    logins = vault.request_count("auth/approle/login")
    assert backend.get_variable(key) == value
    time.sleep(2.2)
    assert backend.get_variable(key) == value
    assert vault.request_count("auth/approle/login") - logins == 2
    assert _responses_with_error(vault, f"secret/data/variables/{key}") == 0


def test_revoked_token_costs_one_relogin(vault, short_roles, variable):
    key, value = variable
    role_id, secret_id = short_roles["renewable"]
    backend = VaultBackend(
        url=vault.url, auth_type="approle", role_id=role_id, secret_id=secret_id, cache_ttl_seconds=0
    )
    assert backend.get_variable(key) == value
    vault.client().auth.token.revoke(backend.client.token)
    logins = vault.request_count("auth/approle/login")
    assert backend.get_variable(key) == value
    assert vault.request_count("auth/approle/login") - logins == 1


def test_token_path_is_reread_after_a_403(vault, policy, variable, tmp_path: Path):
    key, value = variable
    root = vault.client()
    token_file = tmp_path / "token"
    token_file.write_text(root.auth.token.create(policies=[policy], ttl="1h")["auth"]["client_token"])
    backend = VaultBackend(url=vault.url, token_path=str(token_file), cache_ttl_seconds=0)
    assert backend.get_variable(key) == value
    # An agent rotates the file and the old token is revoked.
    root.auth.token.revoke(token_file.read_text())
    token_file.write_text(root.auth.token.create(policies=[policy], ttl="1h")["auth"]["client_token"])
    assert backend.get_variable(key) == value
