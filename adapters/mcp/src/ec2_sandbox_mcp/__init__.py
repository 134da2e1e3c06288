"""An MCP server exposing the four ec2-sandbox tools to any MCP client.

Start it with ``ec2-sandbox mcp`` (stdio, for Claude Desktop, IDEs and the Agents SDK's MCP support) or
``ec2-sandbox mcp --transport http --port 8765`` (streamable HTTP on 127.0.0.1, path ``/mcp``); the command
comes with this distribution, through its ``ec2_sandbox`` entry point (:mod:`ec2_sandbox_mcp.command`).
In Python:

>>> from ec2_sandbox_mcp import create_mcp_server
>>> server = create_mcp_server()  # local sandbox; or a SandboxConfig / environment name

The server lives in :mod:`ec2_sandbox_mcp.server`. Its names are imported from there on first use: the
entry point loads this package whenever ec2-sandbox loads its plugins, and the MCP SDK takes about a second
to import, which no other command should pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import (
        INSTRUCTIONS,
        create_mcp_server,
        instructions,
        serve,
        serve_http,
        serve_stdio,
        to_call_tool_result,
    )

__all__ = [
    "INSTRUCTIONS",
    "create_mcp_server",
    "instructions",
    "serve",
    "serve_http",
    "serve_stdio",
    "to_call_tool_result",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
