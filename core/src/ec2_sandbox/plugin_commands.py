"""The ``ec2-sandbox`` commands, added through ``register_commands`` (built-ins first, then plugins).

:func:`ec2_sandbox.cli.build_parser` calls :func:`add_commands` with its subparsers. Each plugin's hook gets
a view of them that keeps the rules of every other hook:

* a command name (or alias) already taken keeps its first owner - the built-ins, then plugins in
  entry-point name order - and the later one is reported; the plugin gets a detached parser to fill in, so
  the rest of its hook still runs;
* a hook that raises has every command it added in that call removed again (all or nothing per call);
* a command whose parser sets no ``handler`` fails with :class:`~ec2_sandbox.errors.PluginError` naming the
  plugin when it is run, instead of an AttributeError.

Problems go to the registry's ``errors`` (``ec2-sandbox plugins`` prints them) and the log, once per
process however often the parser is built.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, NoReturn

from .errors import PluginError
from .plugins import PluginInfo, Registry

log = logging.getLogger(__name__)


def add_commands(registry: Registry, subparsers: argparse._SubParsersAction[Any]) -> None:
    """Call every ``register_commands`` implementation of ``registry`` with ``subparsers``."""
    for info, impl in registry.command_hooks:
        view = PluginSubparsers(subparsers, registry, info)
        try:
            result = impl.function(**({"subparsers": view} if "subparsers" in impl.argnames else {}))
        except (Exception, SystemExit) as exc:  # argparse's own errors end in SystemExit
            view.roll_back()
            dropped = f"; dropped the commands it added ({', '.join(view.added)})" if view.added else ""
            report(
                registry,
                f"plugin {info.name!r} raised in register_commands: {type(exc).__name__}: {exc}{dropped}",
            )
            continue
        if result is not None:
            report(
                registry,
                f"plugin {info.name!r} returned {type(result).__name__} from register_commands, which is "
                "ignored: call subparsers.add_parser(...) for each command instead of returning it",
            )
        for name in view.added:
            key = f"command:{name}"
            registry.owners.setdefault(key, info.name)
            if key not in info.registered:
                info.registered.append(key)


def report(registry: Registry, message: str) -> None:
    """Record a problem once: the parser may be built many times in one process (tests do)."""
    if message not in registry.errors:
        registry.errors.append(message)
        log.error("%s", message)


class PluginSubparsers:
    """What one plugin's ``register_commands`` receives: the command line's subparsers, with its
    ``add_parser`` checked; everything else is passed through."""

    def __init__(self, real: argparse._SubParsersAction[Any], registry: Registry, info: PluginInfo) -> None:
        self._real = real
        self._registry = registry
        self._info = info
        #: Names (not aliases) of the commands this call added.
        self.added: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        taken = [n for n in (name, *kwargs.get("aliases", ())) if n in self._real.choices]
        if taken:
            owner = self._registry.owners.get(f"command:{taken[0]}", "the core")
            report(
                self._registry,
                f"conflict: plugin {self._info.name!r} registers command {taken[0]!r} in register_commands, "
                f"but plugin {owner!r} registered it first; keeping {owner!r}'s",
            )
            for subparsers_only in ("aliases", "help", "deprecated"):  # add_parser's, not the parser's
                kwargs.pop(subparsers_only, None)
            # Detached: the plugin may go on configuring it, and nothing of it reaches the command line.
            return self._real._parser_class(prog=f"{self._real._prog_prefix} {name}", **kwargs)
        parser: argparse.ArgumentParser = self._real.add_parser(name, **kwargs)
        parser.set_defaults(handler=_no_handler(name, self._info.name))
        self.added.append(name)
        return parser

    def roll_back(self) -> None:
        """Remove the commands this call added (with their aliases) from the command line."""
        names = set(self.added)
        parsers = {id(self._real.choices[n]) for n in names}
        for key in [k for k, p in self._real.choices.items() if id(p) in parsers]:
            del self._real.choices[key]
        self._real._choices_actions[:] = [a for a in self._real._choices_actions if a.dest not in names]


def _no_handler(command: str, plugin: str) -> Any:
    def fail(args: argparse.Namespace) -> NoReturn:
        raise PluginError(
            f"command {command!r} of plugin {plugin!r} has no handler: its register_commands must call "
            "parser.set_defaults(handler=function) on the parser it adds"
        )

    return fail
