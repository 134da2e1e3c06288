"""The plugin manager: built-ins first, then the ``ec2_sandbox`` entry points, each loaded on its own.

Loading order is fixed: the built-ins, then every entry point of the ``ec2_sandbox`` group in entry-point
name order. pluggy's own call order (last registered first, ``tryfirst``/``trylast``) is deliberately not
used: each plugin's hook is called on its own, in that fixed order, so precedence never depends on
installation order.

A plugin that fails to import, implements an unknown hook (or none at all), raises in a hook or registers
something malformed is reported once, with a message naming the plugin and the hook, and the rest keeps
working:

* failing to import, unknown hooks, a bad hook signature: the plugin is skipped entirely;
* raising in a hook: everything that hook call registered is dropped (all or nothing per hook call);
* a malformed registration: that one registration is dropped, the plugin's others stand.

A name registered twice (runtime, transport or cleanup policy) keeps its FIRST registration - so no plugin
can replace a built-in - and the later one is reported as a conflict naming both plugins.

``EC2_SANDBOX_PLUGINS`` limits which entry points load: unset loads all, empty loads none, otherwise a
comma-separated list of entry-point or distribution names. Built-ins always load.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy
from pydantic import ValidationError

from . import hookspecs
from .runtimes import Runtime

log = logging.getLogger("ec2_sandbox")
ENTRY_POINT_GROUP = "ec2_sandbox"
ENV_VAR = "EC2_SANDBOX_PLUGINS"
BUILTINS = "ec2_sandbox.builtins"
HOOKS = ("register_runtimes", "register_transports", "register_cleanup_policies")
#: Transport and cleanup-policy names: the same form as runtime names.
NAME_RE = re.compile(r"^[a-z][a-z0-9_.+-]{0,31}$")
_KINDS = {
    "register_runtimes": "runtime",
    "register_transports": "transport",
    "register_cleanup_policies": "cleanup_policy",
}


@dataclass
class PluginInfo:
    """One loaded plugin: what ``ec2-sandbox plugins`` shows."""

    name: str
    version: str | None
    hooks: list[str] = field(default_factory=list)
    #: ``kind:name`` of everything it registered and kept, e.g. ``runtime:perl``.
    registered: list[str] = field(default_factory=list)
    builtin: bool = False
    #: Distribution that provides it (None for the built-ins).
    dist: str | None = None
    #: ``module:attr`` the entry point names.
    value: str | None = None


@dataclass
class Registry:
    """What the loaded plugins registered."""

    runtimes: dict[str, Runtime] = field(default_factory=dict)
    transports: dict[str, Callable[..., Any]] = field(default_factory=dict)
    cleanup_policies: dict[str, Any] = field(default_factory=dict)
    #: ``kind:name`` -> plugin that registered it.
    owners: dict[str, str] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Entry points installed but not loaded because of EC2_SANDBOX_PLUGINS.
    disabled: list[str] = field(default_factory=list)

    def runtime(self, name: str) -> Runtime | None:
        return self.runtimes.get(name)

    def plugin(self, name: str) -> PluginInfo | None:
        return next((p for p in self.plugins if p.name == name), None)


def _fail(registry: Registry, message: str) -> None:
    registry.errors.append(message)
    log.error("%s", message)


def _entry_points(registry: Registry) -> list[importlib.metadata.EntryPoint]:
    """The group's entry points in name order, one per name, filtered by EC2_SANDBOX_PLUGINS."""
    by_name: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        first = by_name.get(ep.name)
        if first is None:
            by_name[ep.name] = ep
        elif first.value != ep.value:
            # The same distribution seen twice on sys.path names the same object: not a conflict.
            _fail(
                registry,
                f"plugin {ep.name!r}: two installed distributions use this entry-point name "
                f"({_dist_name(first)} -> {first.value}, {_dist_name(ep)} -> {ep.value}); "
                f"keeping {_dist_name(first)}'s",
            )
    names = sorted(by_name)
    raw = os.environ.get(ENV_VAR)
    if raw is None:
        return [by_name[n] for n in names]
    wanted = {n.strip() for n in raw.split(",") if n.strip()}
    chosen = [n for n in names if n in wanted or _dist_name(by_name[n]) in wanted]
    registry.disabled = [n for n in names if n not in chosen]
    known = set(names) | {_dist_name(ep) for ep in by_name.values()}
    for missing in sorted(wanted - known):
        _fail(
            registry,
            f"{ENV_VAR} names plugin {missing!r}, which is not installed "
            f"(installed: {', '.join(names) or 'none'})",
        )
    return [by_name[n] for n in chosen]


def _dist_name(ep: importlib.metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def load_registry() -> Registry:
    """Load the built-ins and every selected plugin; never raises because of a plugin."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    from . import default_plugins

    try:
        core_version: str | None = importlib.metadata.version("ec2-sandbox")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        core_version = None
    builtins = PluginInfo(
        BUILTINS, core_version, builtin=True, dist="ec2-sandbox", value=default_plugins.__name__
    )
    candidates: list[tuple[object, PluginInfo]] = [(default_plugins, builtins)]
    for ep in _entry_points(registry):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            ep.name, dist.version if dist is not None else None, dist=_dist_name(ep), value=ep.value
        )
        try:
            module = ep.load()
        except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() must not end the program
            _fail(registry, f"plugin {ep.name!r} failed to import ({ep.value}): {type(exc).__name__}: {exc}")
            continue
        candidates.append((module, info))

    loaded: list[tuple[object, PluginInfo]] = []
    for module, info in candidates:
        if _register(pm, registry, module, info):
            loaded.append((module, info))
            registry.plugins.append(info)

    for hook in HOOKS:
        impls = {impl.plugin_name: impl for impl in getattr(pm.hook, hook).get_hookimpls()}
        for _module, info in loaded:
            impl = impls.get(info.name)
            if impl is not None:
                info.hooks.append(hook)
                _call(registry, hook, impl, info)
    return registry


def _register(pm: pluggy.PluginManager, registry: Registry, module: object, info: PluginInfo) -> bool:
    """Register one plugin with pluggy; False (and one error) if it cannot be used at all."""
    try:
        pm.register(module, name=info.name)
    except Exception as exc:  # pluggy's PluginValidationError names the hook and the bad argument
        _fail(registry, f"plugin {info.name!r} could not be registered: {type(exc).__name__}: {exc}")
        return False
    callers = pm.get_hookcallers(module) or []
    unknown = sorted(hc.name for hc in callers if hc.spec is None)
    bad_kind = sorted(
        hc.name
        for hc in callers
        if hc.spec is not None
        and any(i.plugin is module and (i.hookwrapper or i.wrapper) for i in hc.get_hookimpls())
    )
    problem = None
    if unknown:
        problem = f"implements unknown hook(s) {', '.join(unknown)}; known hooks: {', '.join(HOOKS)}"
    elif bad_kind:
        problem = f"implements {', '.join(bad_kind)} as a wrapper; register hooks must be plain functions"
    elif not callers:
        problem = (
            f"implements no hooks: mark its functions with ec2_sandbox.hookimpl (known hooks: "
            f"{', '.join(HOOKS)})"
        )
    if problem is not None:
        pm.unregister(module)
        _fail(registry, f"plugin {info.name!r} {problem}")
        return False
    return True


def _call(registry: Registry, hook: str, impl: pluggy.HookImpl, info: PluginInfo) -> None:
    """Run one plugin's hook; commit what it registered only if it returns normally."""
    pending: list[tuple[str, Any]] = []
    register = _register_fn(registry, hook, info, pending)
    kwargs = {"register": register} if "register" in impl.argnames else {}
    try:
        result = impl.function(**kwargs)
    except (Exception, SystemExit) as exc:
        dropped = f"; dropped what it registered ({', '.join(n for n, _ in pending)})" if pending else ""
        _fail(registry, f"plugin {info.name!r} raised in {hook}: {type(exc).__name__}: {exc}{dropped}")
        return
    if result is not None:
        _fail(
            registry,
            f"plugin {info.name!r} returned {type(result).__name__} from {hook}, which is ignored: "
            "call register(...) for each thing to add instead of returning it",
        )
    kind = _KINDS[hook]
    table = {
        "runtime": registry.runtimes,
        "transport": registry.transports,
        "cleanup_policy": registry.cleanup_policies,
    }[kind]
    for name, obj in pending:
        key = f"{kind}:{name}"
        owner = registry.owners.get(key)
        if owner is not None:
            _fail(
                registry,
                f"conflict: plugin {info.name!r} registers {kind} {name!r} in {hook}, but plugin "
                f"{owner!r} registered it first; keeping {owner!r}'s",
            )
            continue
        registry.owners[key] = info.name
        info.registered.append(key)
        table[name] = obj


def _register_fn(
    registry: Registry, hook: str, info: PluginInfo, pending: list[tuple[str, Any]]
) -> Callable[..., None]:
    """The ``register`` callback handed to one plugin's hook. A malformed call is reported and skipped."""

    def malformed(message: str) -> None:
        _fail(registry, f"plugin {info.name!r} registered something malformed in {hook}: {message}")

    def add(name: str, obj: Any) -> None:
        if any(n == name for n, _ in pending):
            malformed(f"{_KINDS[hook]} {name!r} registered twice in the same call; keeping the first")
            return
        pending.append((name, obj))

    def register_runtime(runtime: Any = None, *extra: Any) -> None:
        if extra:
            malformed(f"register() takes one Runtime, got {1 + len(extra)} arguments")
            return
        if isinstance(runtime, dict):
            try:
                runtime = Runtime.model_validate(runtime)
            except ValidationError as exc:
                malformed(f"invalid runtime {runtime.get('name')!r}: {_one_line(exc)}")
                return
        if not isinstance(runtime, Runtime):
            malformed(f"register() expects an ec2_sandbox.Runtime, got {type(runtime).__name__}")
            return
        add(runtime.name, runtime)

    def register_transport(name: Any = None, factory: Any = None, *extra: Any) -> None:
        if extra or not isinstance(name, str) or not callable(factory):
            malformed(
                "register() expects (name: str, factory: callable(config) -> Transport), got "
                f"({', '.join(type(a).__name__ for a in (name, factory, *extra))})"
            )
            return
        if not NAME_RE.match(name):
            malformed(f"transport name {name!r} must match {NAME_RE.pattern}")
            return
        add(name, factory)

    def register_policy(policy: Any = None, *extra: Any) -> None:
        name = getattr(policy, "name", None)
        if extra:
            malformed(f"register() takes one cleanup policy, got {1 + len(extra)} arguments")
        elif not isinstance(name, str) or not NAME_RE.match(name):
            malformed(
                f"a cleanup policy needs a 'name' matching {NAME_RE.pattern}; "
                f"{type(policy).__name__} has {name!r}"
            )
        elif not callable(getattr(policy, "select", None)):
            malformed(f"cleanup policy {name!r} has no select(inventory, hours, config) method")
        elif not isinstance(getattr(policy, "needs_sizes", False), bool):
            malformed(f"cleanup policy {name!r}: needs_sizes must be a bool")
        else:
            add(name, policy)

    return {
        "register_runtimes": register_runtime,
        "register_transports": register_transport,
        "register_cleanup_policies": register_policy,
    }[hook]


def _one_line(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


_registry: Registry | None = None
_registry_lock = threading.Lock()


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry, loaded on first use (``reload=True`` loads it again)."""
    global _registry
    with _registry_lock:
        if _registry is None or reload:
            _registry = load_registry()
        return _registry
