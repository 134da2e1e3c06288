"""boto3 sessions built from a configuration's auth mode: profile, keys, or the default chain.

One session per configuration, reused: boto3 sessions are not thread-safe to create concurrently but their
clients are safe to share, so clients are cached here too.
"""

from __future__ import annotations

import datetime
import threading
from typing import Any, Literal

import boto3
import botocore.exceptions

from .config import SandboxConfig
from .errors import ConfigError

AuthMode = Literal["profile", "access_keys", "temporary_credentials", "default_chain"]
#: The AWS services whose clients :func:`client` makes.
Service = Literal["ec2", "ec2-instance-connect", "ssm"]

_lock = threading.Lock()
_clients: dict[tuple[Any, ...], Any] = {}


def auth_mode(config: SandboxConfig) -> AuthMode:
    """Which credentials a configuration uses (keys win over a profile when both are given)."""
    if config.access_key_id:
        return "temporary_credentials" if config.session_token else "access_keys"
    if config.aws_profile:
        return "profile"
    return "default_chain"


def make_session(config: SandboxConfig) -> boto3.Session:
    mode = auth_mode(config)
    kwargs: dict[str, Any] = {"region_name": config.region}
    if mode in ("access_keys", "temporary_credentials"):
        assert config.secret_access_key is not None  # the model takes both keys or neither
        kwargs["aws_access_key_id"] = config.access_key_id
        kwargs["aws_secret_access_key"] = config.secret_access_key.get_secret_value()
        if config.session_token:
            kwargs["aws_session_token"] = config.session_token.get_secret_value()
    elif mode == "profile":
        kwargs["profile_name"] = config.aws_profile
    try:
        return boto3.Session(**kwargs)
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError(
            f"aws_profile {config.aws_profile!r} is not defined in the AWS config or credentials files "
            f"(~/.aws/config, ~/.aws/credentials, or $AWS_CONFIG_FILE / $AWS_SHARED_CREDENTIALS_FILE); "
            f"create it with 'aws configure --profile {config.aws_profile}' or choose another"
        ) from None


def credential_lifetime(session: boto3.Session | None) -> float | None:
    """Seconds until the session's credentials expire, or None when they do not say (long-term keys, or
    temporary keys given without their expiry). Whatever is signed with them - a presigned URL too - stops
    working when they expire, whatever expiry it asked for."""
    credentials = session.get_credentials() if session is not None else None
    if credentials is None:
        return None
    # Refreshable credentials (SSO, assumed roles, credential_process) renew themselves here when close to
    # expiry: read the expiry of what will actually sign.
    credentials.get_frozen_credentials()
    # botocore keeps the expiry of RefreshableCredentials only in this attribute; static keys have none.
    expiry = getattr(credentials, "_expiry_time", None)
    if not isinstance(expiry, datetime.datetime):
        return None
    return (expiry - datetime.datetime.now(datetime.UTC)).total_seconds()


def client(config: SandboxConfig, service: Service, **kwargs: Any) -> Any:
    """A cached boto3 client for ``service`` under the configuration's credentials and region."""
    secret = config.secret_access_key.get_secret_value() if config.secret_access_key else None
    token = config.session_token.get_secret_value() if config.session_token else None
    key = (
        service,
        config.region,
        config.aws_profile,
        config.access_key_id,
        secret,
        token,
        tuple(sorted(kwargs.items())),
    )
    with _lock:
        if key not in _clients:
            _clients[key] = make_session(config).client(service, **kwargs)
        return _clients[key]


def clear_clients() -> None:
    """Forget cached clients (tests that switch endpoints use this)."""
    with _lock:
        _clients.clear()
