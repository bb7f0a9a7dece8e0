"""Vault auth methods for :class:`~airflow_llm_provider.secrets.vault.VaultBackend`, one table.

Each method names the ``backend_kwargs`` it needs (checked when the backend is built, so a typo
fails at configuration time, not at the first lookup) and how it logs in with hvac. The names and
defaults are the hashicorp provider's, so ``backend_kwargs`` carry over unchanged.

No Airflow import here, and hvac arrives as the client argument: this module is loaded while
Airflow builds its secrets backends.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import hvac

DEFAULT_KUBERNETES_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# Instance metadata endpoints (Azure IMDS, GCE metadata server): reachable only from inside the cloud.
AZURE_IMDS_TOKEN_URL = "http://169.254.169.254/metadata/identity/oauth2/token"
GCE_IDENTITY_URL = "http://metadata/computeMetadata/v1/instance/service-accounts/default/identity"


class VaultAuthConfigError(ValueError):
    """The backend_kwargs do not carry what the chosen auth method needs."""


@dataclass(frozen=True)
class AuthParams:
    """The auth-related ``backend_kwargs`` (secrets among them: never logged or repr'd)."""

    values: Mapping[str, Any]

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name)
        return default if value in (None, "") else value

    def __repr__(self) -> str:
        return f"AuthParams({sorted(k for k, v in self.values.items() if v not in (None, ''))})"


def _read_file(path: str, what: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError as err:
        raise VaultAuthConfigError(f"cannot read the {what} file {path!r}: {err.strerror}") from err


def _login_approle(client: hvac.Client, p: AuthParams, mount: str) -> Any:
    return client.auth.approle.login(
        role_id=p.get("role_id"), secret_id=p.get("secret_id"), mount_point=mount
    )


def _login_userpass(client: hvac.Client, p: AuthParams, mount: str) -> Any:
    return client.auth.userpass.login(
        username=p.get("username"), password=p.get("password"), mount_point=mount
    )


def _login_ldap(client: hvac.Client, p: AuthParams, mount: str) -> Any:
    return client.auth.ldap.login(username=p.get("username"), password=p.get("password"), mount_point=mount)


def _login_radius(client: hvac.Client, p: AuthParams, mount: str) -> Any:
    # The stock backend calls the admin config endpoint here and never logs in; this is the login.
    return client.auth.radius.login(username=p.get("username"), password=p.get("password"), mount_point=mount)


def _login_github(client: hvac.Client, p: AuthParams, mount: str) -> Any:
    return client.auth.github.login(token=p.get("token"), mount_point=mount)


def _login_jwt(client: hvac.Client, p: AuthParams, mount: str) -> Any:
    jwt = p.get("jwt_token") or _read_file(p.get("jwt_token_path"), "jwt_token_path")
    return client.auth.jwt.jwt_login(role=p.get("jwt_role"), jwt=jwt, path=mount)


def _login_kubernetes(client: hvac.Client, p: AuthParams, mount: str) -> Any:
    # Read at every login: projected service-account tokens are rotated by the kubelet.
    jwt = _read_file(p.get("kubernetes_jwt_path", DEFAULT_KUBERNETES_JWT_PATH), "kubernetes_jwt_path")
    return client.auth.kubernetes.login(role=p.get("kubernetes_role"), jwt=jwt, mount_point=mount)


def _login_cert(client: hvac.Client, p: AuthParams, mount: str) -> Any:
    # The TLS client certificate travels in the hvac session (``cert`` kwarg); ``cert_role`` picks
    # one of the method's roles (empty: Vault tries them all).
    return client.auth.cert.login(name=p.get("cert_role", ""), mount_point=mount)


def _login_aws_iam(client: hvac.Client, p: AuthParams, mount: str) -> Any:
    access_key, secret_key, session_token = p.get("key_id"), p.get("secret_id"), None
    if not (access_key and secret_key):
        try:
            import boto3
        except ImportError as err:
            raise VaultAuthConfigError(
                "auth_type 'aws_iam' without key_id/secret_id reads the AWS credentials chain, "
                "which needs boto3: pip install boto3"
            ) from err
        session = boto3.Session()
        if p.get("assume_role_kwargs"):
            response = session.client("sts").assume_role(**p.get("assume_role_kwargs"))
            creds = response["Credentials"]
            access_key, secret_key = creds["AccessKeyId"], creds["SecretAccessKey"]
            session_token = creds["SessionToken"]
        else:
            frozen = session.get_credentials().get_frozen_credentials()
            access_key, secret_key, session_token = frozen.access_key, frozen.secret_key, frozen.token
    return client.auth.aws.iam_login(
        access_key,
        secret_key,
        session_token=session_token,
        role=p.get("role_id"),
        region=p.get("region", "us-east-1"),
        mount_point=mount,
    )


def _login_azure(client: hvac.Client, p: AuthParams, mount: str) -> Any:
    import requests

    resource = p.get("azure_resource", "https://management.azure.com/")
    response = requests.get(
        AZURE_IMDS_TOKEN_URL,
        params={"api-version": "2018-02-01", "resource": resource},
        headers={"Metadata": "true"},
        timeout=10,
    )
    response.raise_for_status()
    return client.auth.azure.login(
        role=p.get("role_id"), jwt=response.json()["access_token"], mount_point=mount
    )


def _login_gcp(client: hvac.Client, p: AuthParams, mount: str) -> Any:
    role = p.get("role_id")
    keyfile = p.get("gcp_keyfile_dict")
    if isinstance(keyfile, str):
        keyfile = json.loads(keyfile)
    if keyfile is None and p.get("gcp_key_path"):
        keyfile = json.loads(_read_file(p.get("gcp_key_path"), "gcp_key_path"))
    if keyfile is None:
        import requests

        # On GCE/GKE the metadata server signs an identity token for Vault's audience.
        response = requests.get(
            GCE_IDENTITY_URL,
            params={"audience": f"vault/{role}", "format": "full"},
            headers={"Metadata-Flavor": "Google"},
            timeout=10,
        )
        response.raise_for_status()
        return client.auth.gcp.login(role=role, jwt=response.text, mount_point=mount)
    try:
        import time

        from google.auth import crypt, jwt
    except ImportError as err:
        raise VaultAuthConfigError(
            "auth_type 'gcp' with a key file signs a JWT with google-auth: pip install google-auth"
        ) from err
    now = int(time.time())
    claims = {"sub": keyfile["client_email"], "aud": f"vault/{role}", "iat": now, "exp": now + 900}
    signer = crypt.RSASigner.from_service_account_info(keyfile)
    token = jwt.encode(signer, claims).decode()
    return client.auth.gcp.login(role=role, jwt=token, mount_point=mount)


@dataclass(frozen=True)
class AuthMethod:
    name: str
    required: tuple[tuple[str, ...], ...]
    """Each inner tuple is one requirement: any one of its kwargs satisfies it."""
    login: Callable[[hvac.Client, AuthParams, str], Any] | None
    """None for ``token``: no login call, the token is set on the client."""


AUTH_METHODS: dict[str, AuthMethod] = {
    method.name: method
    for method in (
        AuthMethod("token", (), None),
        AuthMethod("approle", (("role_id",),), _login_approle),
        AuthMethod("userpass", (("username",), ("password",)), _login_userpass),
        AuthMethod("ldap", (("username",), ("password",)), _login_ldap),
        AuthMethod("radius", (("username",), ("password",)), _login_radius),
        AuthMethod("github", (("token",),), _login_github),
        AuthMethod("jwt", (("jwt_role",), ("jwt_token", "jwt_token_path")), _login_jwt),
        AuthMethod("kubernetes", (("kubernetes_role",),), _login_kubernetes),
        AuthMethod("cert", (), _login_cert),
        AuthMethod("aws_iam", (), _login_aws_iam),
        AuthMethod("azure", (("role_id",),), _login_azure),
        AuthMethod("gcp", (("role_id",),), _login_gcp),
    )
}
# The kwargs that feed logins. None of them is ever logged.
AUTH_KWARGS = (
    "token",
    "token_path",
    "role_id",
    "secret_id",
    "username",
    "password",
    "key_id",
    "assume_role_kwargs",
    "region",
    "kubernetes_role",
    "kubernetes_jwt_path",
    "jwt_role",
    "jwt_token",
    "jwt_token_path",
    "gcp_key_path",
    "gcp_keyfile_dict",
    "gcp_scopes",
    "azure_tenant_id",
    "azure_resource",
    "radius_host",
    "radius_secret",
    "radius_port",
    "cert_role",
)


def auth_method(name: str, params: AuthParams) -> AuthMethod:
    """The method called ``name``, after checking ``params`` has what it needs."""
    method = AUTH_METHODS.get(name)
    if method is None:
        raise VaultAuthConfigError(
            f"auth_type={name!r} is not a Vault auth method this backend knows; use one of: "
            f"{', '.join(AUTH_METHODS)}"
        )
    missing = [" or ".join(options) for options in method.required if not any(params.get(o) for o in options)]
    if missing:
        raise VaultAuthConfigError(f"auth_type={name!r} needs {', '.join(missing)} in backend_kwargs")
    return method
