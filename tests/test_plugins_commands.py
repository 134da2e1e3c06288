"""``register_commands``: plugins add ``ec2-sandbox`` commands, with the rules of every other hook.

The ``commands`` fixture plugin adds ``fixture-hello`` (a working command), ``exec`` (a core command's name)
and ``fixture-nohandler``; ``commands-raises`` adds ``fixture-half`` and then raises.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from plugin_fixtures import FIXTURES, install
from support.cli import cli as run_cli

from ec2_sandbox.cli import build_parser
from ec2_sandbox.plugins import BUILTINS, Registry, get_registry, load_registry


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("EC2_SANDBOX_PLUGINS", raising=False)
    get_registry()  # the process's registry, loaded before the fixtures are on sys.path

    def installer(names: list[str]) -> Registry:
        monkeypatch.syspath_prepend(str(install(tmp_path / "site", names)))
        return load_registry()

    return installer


def commands(parser) -> dict:  # type: ignore[no-untyped-def]
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices


def test_the_core_commands_come_through_the_builtins_hook(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EC2_SANDBOX_PLUGINS", "")
    registry = load_registry()
    names = list(commands(build_parser(registry)))
    assert names == ["exec", "files", "cleanup", "status", "plugins", "config", "prepare-instance"]
    builtins = registry.plugin(BUILTINS)
    assert builtins is not None and "register_commands" in builtins.hooks
    assert [r for r in builtins.registered if r.startswith("command:")] == [f"command:{n}" for n in names]


def test_a_plugin_command_conflict_and_missing_handler(site) -> None:  # type: ignore[no-untyped-def]
    registry = site(["commands"])
    parser = build_parser(registry)
    choices = commands(parser)
    assert "fixture-hello" in choices and "fixture-nohandler" in choices
    # the core's exec is kept: the plugin's options never reach it
    assert "--impostor" not in choices["exec"].format_help()
    (error,) = registry.errors
    assert error == (
        "conflict: plugin 'commands' registers command 'exec' in register_commands, but plugin "
        f"{BUILTINS!r} registered it first; keeping {BUILTINS!r}'s"
    )
    info = registry.plugin("commands")
    assert info is not None and info.hooks == ["register_commands"]
    assert info.registered == ["command:fixture-hello", "command:fixture-nohandler"]
    assert registry.owners["command:exec"] == BUILTINS
    build_parser(registry)  # built again (as main() does per call): nothing is reported or recorded twice
    assert len(registry.errors) == 1 and len(info.registered) == 2


def test_a_raising_hook_leaves_none_of_its_commands(site) -> None:  # type: ignore[no-untyped-def]
    registry = site(["commands-raises", "commands"])
    parser = build_parser(registry)
    choices = commands(parser)
    assert "fixture-half" not in choices and "fixture-half-alias" not in choices
    assert "fixture-half" not in parser.format_help()
    assert "fixture-hello" in choices  # the other plugin is unaffected
    (error,) = [e for e in registry.errors if "'commands-raises'" in e]
    assert error == (
        "plugin 'commands-raises' raised in register_commands: RuntimeError: cannot finish registering; "
        "dropped the commands it added (fixture-half)"
    )


def test_a_plugin_command_in_help_and_run(tmp_path: Path, tmp_base_dir: str) -> None:
    """Through a real entry point, in a real process: listed by --help, run with the global options."""
    site = install(tmp_path / "site", ["commands"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EC2_SANDBOX", "AWS_"))}
    env |= {"PYTHONPATH": os.pathsep.join([str(site), str(FIXTURES.parent)])}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(env, *args, cwd=tmp_path, text=True)

    proc = cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert "fixture-hello       say hello from a plugin command" in proc.stdout
    assert "    mcp " in proc.stdout  # ec2-sandbox-mcp is installed in this workspace
    proc = cli("fixture-hello", "--name", "plugins", "-E", "education")
    assert (proc.returncode, proc.stdout) == (3, "hello plugins from education (max_memory_mb 256)\n")
    proc = cli("fixture-nohandler")
    assert proc.returncode == 125
    assert proc.stderr.endswith(
        "ec2-sandbox: command 'fixture-nohandler' of plugin 'commands' has no handler: its register_commands "
        "must call parser.set_defaults(handler=function) on the parser it adds\n"
    )
    proc = cli("plugins")
    assert "registered: command:fixture-hello, command:fixture-nohandler\n" in proc.stdout
    assert "error: conflict: plugin 'commands' registers command 'exec'" in proc.stderr
