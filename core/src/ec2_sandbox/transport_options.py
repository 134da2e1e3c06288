"""The settings of the built-in transports, registered with them as options models (``default_plugins``).

They are settings of every environment, flat, under the names the configuration has always used
(``ssh_user``, ``s3_bucket``; see :mod:`ec2_sandbox.config`). The models live here rather than next to
their transports because registering a transport must not import it: ``ssh`` and ``eic`` need asyncssh,
which is an optional extra.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SSHOptions(BaseModel):
    """How the ``ssh`` transport connects; the ``eic`` transport reads these too (user, port, host keys,
    sudo), since it opens an SSH connection after pushing its key."""

    model_config = ConfigDict(extra="forbid")

    ssh_user: str = Field(default="ubuntu", description="OS user for EIC/SSH connections.")
    ssh_port: int = Field(default=22, ge=1, le=65535, description="SSH port on the target.")
    ssh_host: str | None = Field(default=None, description="Host for plain 'ssh' transport.")
    ssh_key_file: str | None = Field(default=None, description="Private key file for plain 'ssh'.")
    ssh_known_hosts: str | None = Field(
        default=None, description="known_hosts file (default: ~/.cache/ec2-sandbox/known_hosts)."
    )
    ssh_strict_host_keys: bool = Field(
        default=False, description="Refuse unknown host keys instead of trusting them on first use."
    )
    ssh_sudo: bool = Field(
        default=False, description="Start the runner with 'sudo -n' (root runner: per-session uids)."
    )


class EICOptions(BaseModel):
    """Where the ``eic`` transport connects after EC2 Instance Connect accepted its key."""

    model_config = ConfigDict(extra="forbid")

    eic_endpoint_id: str | None = Field(default=None, description="EC2 Instance Connect Endpoint id.")
    eic_address: Literal["public", "private"] = Field(
        default="public", description="Which address of the instance 'eic' connects to (no endpoint)."
    )


class SSMOptions(BaseModel):
    """The ``ssm`` transport's (and a fleet's members') way around SSM's size limits."""

    model_config = ConfigDict(extra="forbid")

    s3_bucket: str | None = Field(default=None, description="Bucket for staging large inputs and outputs.")
