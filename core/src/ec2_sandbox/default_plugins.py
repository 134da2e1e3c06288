"""The built-ins, registered through the same hooks a third-party plugin uses."""

from __future__ import annotations

from .cleanup import AgePolicy
from .hookspecs import hookimpl
from .runtimes import BUILTIN_RUNTIMES
from .transports.local import create_local_transport


@hookimpl
def register_runtimes(register):
    for runtime in BUILTIN_RUNTIMES:
        register(runtime)


@hookimpl
def register_transports(register):
    register("local", create_local_transport)


@hookimpl
def register_cleanup_policies(register):
    register(AgePolicy())
