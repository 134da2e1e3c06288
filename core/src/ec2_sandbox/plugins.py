"""The plugin manager: built-ins first, then the ``ec2_sandbox`` entry points, each loaded on its own.

A plugin that fails to import, implements an unknown hook, raises in a hook or registers something
malformed is reported once (naming plugin and hook) and skipped; the core and other plugins keep working.
A name registered twice keeps its first registration (built-ins, then plugins in entry-point name order)
and the later one is reported as a conflict.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .runtimes import Runtime

log = logging.getLogger("ec2_sandbox")
ENTRY_POINT_GROUP = "ec2_sandbox"
HOOKS = ("register_runtimes", "register_transports", "register_cleanup_policies")


@dataclass
class PluginInfo:
    name: str
    version: str | None
    hooks: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    builtin: bool = False


@dataclass
class Registry:
    """What the loaded plugins registered."""

    runtimes: dict[str, Runtime] = field(default_factory=dict)
    transports: dict[str, Callable[..., Any]] = field(default_factory=dict)
    cleanup_policies: dict[str, Any] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def runtime(self, name: str) -> Runtime | None:
        return self.runtimes.get(name)


def _selected(names: list[str]) -> list[str]:
    """EC2_SANDBOX_PLUGINS limits which entry points load: unset = all, empty = none."""
    raw = os.environ.get("EC2_SANDBOX_PLUGINS")
    if raw is None:
        return names
    wanted = {n.strip() for n in raw.split(",") if n.strip()}
    return [n for n in names if n in wanted]


def _fail(registry: Registry, message: str) -> None:
    registry.errors.append(message)
    log.error("%s", message)


def load_registry() -> Registry:
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    from . import default_plugins

    plugins: list[tuple[str, object, PluginInfo]] = [
        (
            "ec2_sandbox.builtins",
            default_plugins,
            PluginInfo("ec2_sandbox.builtins", None, builtin=True),
        )
    ]
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    for name in _selected(sorted(eps)):
        ep = eps[name]
        version = ep.dist.version if ep.dist else None
        try:
            module = ep.load()
        except Exception as exc:
            _fail(
                registry,
                f"plugin {name!r} failed to import ({ep.value}): {type(exc).__name__}: {exc}",
            )
            continue
        plugins.append((name, module, PluginInfo(name, version)))

    for name, module, info in plugins:
        try:
            pm.register(module, name=name)
        except Exception as exc:
            _fail(registry, f"plugin {name!r} could not be registered: {exc}")
            continue
        unknown = [hc.name for hc in pm.get_hookcallers(module) or [] if hc.spec is None]
        if unknown:
            pm.unregister(module)
            _fail(
                registry,
                f"plugin {name!r} implements unknown hook(s) {', '.join(unknown)}; "
                f"known hooks: {', '.join(HOOKS)}",
            )
            continue
        registry.plugins.append(info)

    infos = {info.name: info for _, _, info in plugins}
    for hook in HOOKS:
        for impl in getattr(pm.hook, hook).get_hookimpls()[::-1]:  # pluggy lists last-registered first
            info = infos[impl.plugin_name]
            info.hooks.append(hook)
            try:
                impl.function(register=_register_fn(registry, hook, info))
            except Exception as exc:
                _fail(registry, f"plugin {info.name!r} raised in {hook}: {type(exc).__name__}: {exc}")
    return registry


def _register_fn(registry: Registry, hook: str, info: PluginInfo) -> Callable[..., None]:
    def claim(kind: str, name: str) -> bool:
        key = f"{kind}:{name}"
        owner = registry.owners.get(key)
        if owner is not None:
            _fail(
                registry,
                f"plugin {info.name!r} registers {kind} {name!r} in {hook}, which {owner!r} already "
                f"registered; keeping {owner!r}'s",
            )
            return False
        registry.owners[key] = info.name
        info.registered.append(key)
        return True

    def register_runtime(runtime: Any) -> None:
        if isinstance(runtime, dict):
            runtime = Runtime.model_validate(runtime)
        if not isinstance(runtime, Runtime):
            raise PluginError(f"register() expects a Runtime, got {type(runtime).__name__}")
        if claim("runtime", runtime.name):
            registry.runtimes[runtime.name] = runtime

    def register_transport(name: str, factory: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not callable(factory):
            raise PluginError("register() expects (name: str, factory: callable)")
        if claim("transport", name):
            registry.transports[name] = factory

    def register_policy(policy: Any) -> None:
        name = getattr(policy, "name", None)
        if not isinstance(name, str) or not callable(getattr(policy, "select", None)):
            raise PluginError("register() expects a cleanup policy with a 'name' and a 'select' method")
        if claim("cleanup_policy", name):
            registry.cleanup_policies[name] = policy

    return {
        "register_runtimes": register_runtime,
        "register_transports": register_transport,
        "register_cleanup_policies": register_policy,
    }[hook]


_registry: Registry | None = None


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None or reload:
        _registry = load_registry()
    return _registry
