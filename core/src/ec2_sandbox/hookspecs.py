"""The hooks a plugin implements. Each receives a ``register`` callback and calls it once per thing it adds.

Built-in runtimes, transports and cleanup policies are registered through these very hooks. A hook
returns nothing; it is called once per process, in a fixed order (built-ins first, then plugins by
entry-point name), and the first registration of a name wins. See ``docs/plugins.md``.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ec2_sandbox")
#: Decorator for a plugin's hook functions: ``@ec2_sandbox.hookimpl``.
hookimpl = pluggy.HookimplMarker("ec2_sandbox")


@hookspec
def register_runtimes(register):
    """Add runtimes: ``register(ec2_sandbox.Runtime(...))`` (or a dict of the same fields) for each."""


@hookspec
def register_transports(register):
    """Add transports: ``register("name", factory)`` where ``factory(config) -> Transport``."""


@hookspec
def register_cleanup_policies(register):
    """Add cleanup policies: ``register(policy)``; a policy has ``name``, ``needs_sizes`` and ``select``."""
