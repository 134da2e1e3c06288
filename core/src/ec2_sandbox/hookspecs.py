"""The hooks a plugin implements.

The ``register_*`` hooks that describe what a plugin adds (runtimes, transports, cleanup policies) each
receive a ``register`` callback and call it once per thing they add; they run once per process, when the
registry loads. ``register_commands`` receives the command line's subparsers instead, as llm's hook of that
name receives its click group, and runs each time the ``ec2-sandbox`` parser is built.

Built-in runtimes, transports and cleanup policies are registered through these very hooks. A hook
returns nothing; hooks are called in a fixed order (built-ins first, then plugins by entry-point name),
and the first registration of a name wins. See ``docs/plugins.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import pluggy

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .cleanup import CleanupPolicy
    from .config import SandboxConfig
    from .runtimes import Runtime
    from .transports.base import Transport

hookspec = pluggy.HookspecMarker("ec2_sandbox")
#: Decorator for a plugin's hook functions: ``@ec2_sandbox.hookimpl``.
hookimpl = pluggy.HookimplMarker("ec2_sandbox")

#: A transport's factory: ``factory(config) -> Transport``.
TransportFactory: TypeAlias = "Callable[[SandboxConfig], Transport]"


class Subparsers(Protocol):
    """What ``register_commands`` receives: the command line's argparse subparsers, seen through a view
    that checks each new command's name. ``subparsers.add_parser(name, help=...)`` (``argparse``'s keywords)
    adds a command and returns its parser."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


class RegisterRuntime(Protocol):
    """The ``register`` that ``register_runtimes`` receives."""

    def __call__(self, runtime: Runtime | dict[str, Any], /) -> None: ...


class RegisterTransport(Protocol):
    """The ``register`` that ``register_transports`` receives."""

    def __call__(
        self, name: str, factory: TransportFactory, /, *, options: type[BaseModel] | None = None
    ) -> None: ...


class RegisterCleanupPolicy(Protocol):
    """The ``register`` that ``register_cleanup_policies`` receives."""

    def __call__(self, policy: CleanupPolicy, /) -> None: ...


@hookspec
def register_runtimes(register: RegisterRuntime) -> None:
    """Add runtimes: ``register(ec2_sandbox.Runtime(...))`` (or a dict of the same fields) for each."""


@hookspec
def register_transports(register: RegisterTransport) -> None:
    """Add transports: ``register("name", factory, options=Model)`` where ``factory(config) -> Transport``;
    the optional pydantic ``Model`` holds the transport's settings (``config.options(Model)`` reads them)."""


@hookspec
def register_cleanup_policies(register: RegisterCleanupPolicy) -> None:
    """Add cleanup policies: ``register(policy)``; a policy has ``name``, ``needs_sizes`` and ``select``."""


@hookspec
def register_commands(subparsers: Subparsers) -> None:
    """Add ``ec2-sandbox`` commands: ``p = subparsers.add_parser("name", help=...)``, its arguments, and
    ``p.set_defaults(handler=fn)`` where ``fn(args: argparse.Namespace) -> int`` is the exit status."""
