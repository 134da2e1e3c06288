"""The built-ins, registered through the same hooks a third-party plugin uses."""

from __future__ import annotations

from .cleanup import AgePolicy
from .errors import ConfigError
from .hookspecs import hookimpl
from .runtimes import BUILTIN_RUNTIMES
from .transport_options import EICOptions, SSHOptions, SSMOptions
from .transports.local import create_local_transport
from .transports.ssm import create_ssm_transport


@hookimpl
def register_runtimes(register):
    for runtime in BUILTIN_RUNTIMES:
        register(runtime)


@hookimpl
def register_transports(register):
    register("local", create_local_transport)
    register("ssm", create_ssm_transport, options=SSMOptions)
    register("ssh", create_ssh_transport, options=SSHOptions)
    register("eic", create_eic_transport, options=EICOptions)
    register("fleet", create_fleet_transport)


def _ssh_module(name: str):  # type: ignore[no-untyped-def]
    """Import an SSH-based transport only when one is used: asyncssh is the optional extra 'ssh'."""
    try:
        if name == "eic":
            from .transports import eic as module
        else:
            from .transports import ssh as module
    except ImportError as exc:
        raise ConfigError(
            f"transport {name!r} needs the optional SSH dependencies ({exc.name} is missing): "
            "pip install 'ec2-sandbox[ssh]'"
        ) from None
    return module


def create_fleet_transport(config):  # type: ignore[no-untyped-def]
    # Imported when a fleet is used: it loads boto3, which every start of the command line would pay.
    from .fleet.transport import create_fleet_transport

    return create_fleet_transport(config)


def create_ssh_transport(config):  # type: ignore[no-untyped-def]
    return _ssh_module("ssh").create_ssh_transport(config)


def create_eic_transport(config):  # type: ignore[no-untyped-def]
    return _ssh_module("eic").create_eic_transport(config)


@hookimpl
def register_cleanup_policies(register):
    register(AgePolicy())


@hookimpl
def register_commands(subparsers):
    from .cli import add_core_commands  # the command line only when it is being built

    add_core_commands(subparsers)
