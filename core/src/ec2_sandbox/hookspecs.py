"""The hooks a plugin implements. Each receives a ``register`` callback and calls it once per thing it adds.

Built-in runtimes, transports and cleanup policies are registered through these very hooks.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ec2_sandbox")
hookimpl = pluggy.HookimplMarker("ec2_sandbox")


@hookspec
def register_runtimes(register):
    """Register runtimes: ``register(Runtime(...))``."""


@hookspec
def register_transports(register):
    """Register transports: ``register("name", factory)``; ``factory(config) -> Transport``."""


@hookspec
def register_cleanup_policies(register):
    """Register cleanup policies: ``register(policy)``; a policy has ``name`` and ``select(...)``."""
