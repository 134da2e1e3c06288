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

A name registered twice (runtime, transport, cleanup policy, a transport's option or a command) keeps its
FIRST registration - so no plugin can replace a built-in - and the later one is reported as a conflict naming
both plugins.

A transport may carry an options model (``register("name", factory, options=Model)``): a pydantic model whose
fields become settings of every environment, flat keys next to the core's (``ssh_user``, ``s3_bucket``), as
pytest's ini options are one namespace. See :mod:`ec2_sandbox.config`.

``register_commands`` is not called here: the command line calls it when it builds its parser
(:mod:`ec2_sandbox.plugin_commands`); the registry keeps each plugin's implementation for that.

``EC2_SANDBOX_PLUGINS`` limits which entry points load: unset loads all, empty loads none, otherwise a
comma-separated list of entry-point or distribution names. Built-ins always load.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from . import hookspecs
from .errors import PluginError, SandboxError
from .runtimes import Runtime

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "ec2_sandbox"
ENV_VAR = "EC2_SANDBOX_PLUGINS"
BUILTINS = "ec2_sandbox.builtins"
#: The hooks called when the registry loads, each with a ``register`` callback.
REGISTER_HOOKS = ("register_runtimes", "register_transports", "register_cleanup_policies")
#: Every hook a plugin may implement.
HOOKS = (*REGISTER_HOOKS, "register_commands")
#: Option names: they are also variable names (``EC2_SANDBOX_<NAME>``) and JSON keys.
OPTION_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
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


@dataclass(frozen=True)
class TransportOptions:
    """The options model a transport registration carries, and who registered it."""

    model: type[BaseModel]
    #: The transport whose registration brought the model first (several may share one model).
    transport: str
    plugin: str

    def owner(self) -> str:
        """How an error names where an option comes from."""
        who = "built in" if self.plugin == BUILTINS else f"plugin {self.plugin!r}"
        return f"an option of transport {self.transport!r}, {who}"


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
    #: Options models of the transports, in registration order, one entry per model.
    options: list[TransportOptions] = field(default_factory=list)
    #: ``register_commands`` implementations in loading order, called by the command line.
    command_hooks: list[tuple[PluginInfo, pluggy.HookImpl]] = field(default_factory=list)

    def option_fields(self) -> dict[str, TransportOptions]:
        """Every option name -> the options model that declares it."""
        return {name: spec for spec in self.options for name in spec.model.model_fields}

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
    _loading.active = getattr(_loading, "active", 0) + 1
    try:
        return _load()
    finally:
        _loading.active -= 1


def _load() -> Registry:
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
            if impl is None:
                continue
            info.hooks.append(hook)
            if hook == "register_commands":
                registry.command_hooks.append((info, impl))
            else:
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
    if hook == "register_transports":
        pending = _claim_options(registry, info, pending)
    kind = _KINDS[hook]
    tables: dict[str, dict[str, Any]] = {
        "runtime": registry.runtimes,
        "transport": registry.transports,
        "cleanup_policy": registry.cleanup_policies,
    }
    table = tables[kind]
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
        if kind == "transport":
            factory, options = obj
            obj = factory if info.builtin else _checked_factory(factory, name, info.name)
            if options is not None and all(spec.model is not options for spec in registry.options):
                registry.options.append(TransportOptions(options, name, info.name))
        table[name] = obj


def _claim_options(
    registry: Registry, info: PluginInfo, pending: list[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    """Drop each transport whose options model declares a name a core field or another model holds: an
    option is one flat key of every environment, so two owners would make it ambiguous. Models shared by
    several transports (the same class) are not a conflict."""
    from .config import SandboxConfig

    kept = []
    taken = {name: spec.model for name, spec in registry.option_fields().items()}
    owners = {spec.model: (spec.transport, spec.plugin) for spec in registry.options}
    for name, (factory, options) in pending:
        clash = None
        if options is not None:
            for option in options.model_fields:
                if option in SandboxConfig.model_fields or option == "extends":
                    clash = f"option {option!r} is a core setting"
                elif option in taken and taken[option] is not options:
                    transport, plugin = owners[taken[option]]
                    clash = (
                        f"option {option!r} is declared first by transport {transport!r} of plugin {plugin!r}"
                    )
                if clash:
                    break
        if clash is None:
            kept.append((name, (factory, options)))
            if options is not None:
                owners.setdefault(options, (name, info.name))
                taken.update(dict.fromkeys(options.model_fields, options))
        else:
            _fail(
                registry,
                f"conflict: plugin {info.name!r} registers transport {name!r} in register_transports, but "
                f"its {clash}; the transport is not registered (prefix option names with the transport's "
                "name)",
            )
    return kept


def _checked_factory(factory: Callable[..., Any], transport: str, plugin: str) -> Callable[..., Any]:
    """A plugin's transport factory that raises :class:`PluginError` naming the plugin when it fails for a
    reason that is not one of ec2-sandbox's own errors, or returns something that is not a Transport."""
    from .transports.base import Transport

    def create(config: Any) -> Transport:
        try:
            made = factory(config)
        except SandboxError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {plugin!r}: transport {transport!r} failed to start: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(made, Transport):
            raise PluginError(
                f"plugin {plugin!r}: the factory of transport {transport!r} returned {type(made).__name__}, "
                "not an ec2_sandbox.transports.base.Transport"
            )
        return made

    # Only __wrapped__ (what inspect.unwrap follows): the wrapper keeps its own name and signature.
    return functools.update_wrapper(create, factory, assigned=(), updated=())


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

    def register_transport(name: Any = None, factory: Any = None, *extra: Any, options: Any = None) -> None:
        if extra or not isinstance(name, str) or not callable(factory):
            malformed(
                "register() expects (name: str, factory: callable(config) -> Transport, options=Model), got "
                f"({', '.join(type(a).__name__ for a in (name, factory, *extra))})"
            )
            return
        if not NAME_RE.match(name):
            malformed(f"transport name {name!r} must match {NAME_RE.pattern}")
            return
        problem = _options_problem(options)
        if problem:
            malformed(f"transport {name!r}: options {problem}")
            return
        add(name, (factory, options))

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

    register: dict[str, Callable[..., None]] = {
        "register_runtimes": register_runtime,
        "register_transports": register_transport,
        "register_cleanup_policies": register_policy,
    }
    return register[hook]


def _options_problem(options: Any) -> str | None:
    """What makes ``options`` unusable as a transport's options model (None: nothing)."""
    if options is None:
        return None
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        return f"must be a pydantic BaseModel subclass, got {options!r}"
    for name, info in options.model_fields.items():
        if not OPTION_RE.match(name):
            return f"field {name!r} must match {OPTION_RE.pattern} (it is a JSON key and a variable name too)"
        if info.is_required():
            # Every environment carries every registered transport's options, used or not.
            return f"field {name!r} has no default; every option needs one"
    return None


def _one_line(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


_registry: Registry | None = None
# Re-entrant, so that a plugin asking for the registry while it loads reaches the check below in the same
# thread instead of waiting for itself forever.
_registry_lock = threading.RLock()
#: How many registries this thread is loading.
_loading = threading.local()


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry, loaded on first use (``reload=True`` loads it again).

    A plugin that needs the registry while it is being loaded (a hook or an import that builds a
    ``SandboxConfig``, say) gets a :class:`PluginError` instead of a deadlock or a half-loaded registry.
    """
    global _registry
    with _registry_lock:
        if getattr(_loading, "active", 0):
            raise PluginError(
                "the plugin registry was asked for while plugins were loading: a plugin's import or hook "
                "uses ec2-sandbox's configuration or sandbox; hooks must only describe what they add"
            )
        if _registry is None or reload:
            _registry = load_registry()
        return _registry
