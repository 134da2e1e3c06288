"""The built-ins, registered through the same hooks a third-party plugin uses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .cleanup import AgePolicy
from .errors import ConfigError
from .hookspecs import (
    RegisterCleanupPolicy,
    RegisterRuntime,
    RegisterTransport,
    Subparsers,
    hookimpl,
)
from .runtimes import BUILTIN_RUNTIMES
from .transport_options import EICOptions, SSHOptions, SSMOptions
from .transports.local import create_local_transport
from .transports.ssm import create_ssm_transport

if TYPE_CHECKING:
    from .config import SandboxConfig
    from .fleet.transport import FleetTransport
    from .transports.eic import EICTransport
    from .transports.ssh import SSHTransport


@hookimpl
def register_runtimes(register: RegisterRuntime) -> None:
    for runtime in BUILTIN_RUNTIMES:
        register(runtime)


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    register("local", create_local_transport)
    register("ssm", create_ssm_transport, options=SSMOptions)
    register("ssh", create_ssh_transport, options=SSHOptions)
    register("eic", create_eic_transport, options=EICOptions)
    register("fleet", create_fleet_transport)


@contextlib.contextmanager
def _ssh_extra(name: str) -> Iterator[None]:
    """Around the import of an SSH-based transport, imported only when one is used: asyncssh is the
    optional extra 'ssh'."""
    try:
        yield
    except ImportError as exc:
        raise ConfigError(
            f"transport {name!r} needs the optional SSH dependencies ({exc.name} is missing): "
            "pip install 'ec2-sandbox[ssh]'"
        ) from None


def create_fleet_transport(config: SandboxConfig) -> FleetTransport:
    # Imported when a fleet is used: it loads boto3, which every start of the command line would pay.
    from .fleet.transport import create_fleet_transport

    return create_fleet_transport(config)


def create_ssh_transport(config: SandboxConfig) -> SSHTransport:
    with _ssh_extra("ssh"):
        from .transports.ssh import create_ssh_transport as create
    return create(config)


def create_eic_transport(config: SandboxConfig) -> EICTransport:
    with _ssh_extra("eic"):
        from .transports.eic import create_eic_transport as create
    return create(config)


@hookimpl
def register_cleanup_policies(register: RegisterCleanupPolicy) -> None:
    register(AgePolicy())


@hookimpl
def register_commands(subparsers: Subparsers) -> None:
    from .cli import add_core_commands  # the command line only when it is being built

    add_core_commands(subparsers)
