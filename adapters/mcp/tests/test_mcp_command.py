"""``ec2-sandbox mcp`` comes from this distribution's entry point, and the core knows nothing of MCP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ec2_sandbox
from ec2_sandbox.cli import EXIT_FAILED, build_parser, main
from ec2_sandbox.plugins import load_registry
from ec2_sandbox.tools import TOOLS


def test_the_command_is_registered_through_the_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EC2_SANDBOX_PLUGINS", raising=False)
    registry = load_registry()
    info = registry.plugin("mcp")
    assert info is not None and registry.errors == []
    assert (info.dist, info.value) == ("ec2-sandbox-mcp", "ec2_sandbox_mcp.command")
    assert info.hooks == ["register_commands"]
    parser = build_parser(registry)
    assert "mcp" in parser.format_help()
    assert info.registered == ["command:mcp"] and registry.owners["command:mcp"] == "mcp"


def test_without_the_plugin_the_command_names_the_distribution(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EC2_SANDBOX_PLUGINS", "")
    from ec2_sandbox import plugins

    monkeypatch.setattr(plugins, "_registry", None)  # this test's selection; restored afterwards
    with pytest.raises(SystemExit) as exited:
        main(["mcp"])
    assert exited.value.code == EXIT_FAILED
    err = capsys.readouterr().err
    assert "invalid choice: 'mcp'" in err
    assert "the 'mcp' command comes with ec2-sandbox-mcp: pip install ec2-sandbox-mcp" in err


def test_neither_the_core_nor_loading_plugins_imports_mcp() -> None:
    """The entry point is imported whenever plugins load: it must not pull in the MCP SDK (about a second),
    and the core's command line must not import the adapter at all."""
    code = (
        "import sys\n"
        "from ec2_sandbox.cli import build_parser\n"
        "build_parser()\n"
        "heavy = ('mcp.', 'mcp_types', 'ec2_sandbox_mcp.server')\n"
        "loaded = sorted(m for m in sys.modules if m == 'mcp' or m.startswith(heavy))\n"
        "print(loaded)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout == "[]\n", proc.stderr
    package = Path(ec2_sandbox.__file__).parent
    assert [p for p in package.rglob("*.py") if "ec2_sandbox_mcp" in p.read_text()] == []


def test_the_server_instructions_come_from_the_tool_registry() -> None:
    from ec2_sandbox_mcp import INSTRUCTIONS, create_mcp_server, instructions

    for spec in TOOLS:
        assert f"- {spec.name}: {spec.description.split('. ')[0].rstrip('.')}." in INSTRUCTIONS
    assert create_mcp_server().instructions == INSTRUCTIONS  # type: ignore[attr-defined]
    only = instructions(TOOLS[:1])
    assert TOOLS[0].name in only and TOOLS[1].name not in only
