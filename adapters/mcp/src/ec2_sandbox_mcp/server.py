"""The MCP server: the core's tool registry served over the SDK's low-level ``Server`` (mcp 2.x).

The tool list is exactly :data:`ec2_sandbox.tools.TOOLS` (names, descriptions and input schemas, with the
allowed runtimes as an enum), and so are the server's instructions. Calls are validated with the core's
pydantic models; a bad call is a result with ``isError`` set that says how to fix it. Results carry text,
``structuredContent`` and, for images a run saved, MCP image content. Calls are served concurrently.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server

from ec2_sandbox import AsyncSandbox, Sandbox, SandboxConfig, __version__
from ec2_sandbox.presentation import Rendered, call_tool, sandbox_for
from ec2_sandbox.tools import TOOLS, TOOLS_BY_NAME, ToolSpec

# The public names are the package's (ec2_sandbox_mcp.__all__), which imports them from here on first use.


def instructions(tools: Sequence[ToolSpec] = TOOLS) -> str:
    """What the server tells a client about itself: each tool's name and the first sentence of its
    description, from the registry, so a tool added or reworded there is described here too."""
    lines = ["A sandbox that runs code. Its tools:"]
    for spec in tools:
        first = spec.description.split(". ", 1)[0].rstrip(".")
        lines.append(f"- {spec.name}: {first}.")
    return "\n".join(lines)


INSTRUCTIONS = instructions()


def to_call_tool_result(rendered: Rendered) -> types.CallToolResult:
    """MCP content: the text, then image content; the JSON form as structuredContent."""
    content: list[Any] = [types.TextContent(type="text", text=rendered.text)]
    for image in rendered.images:
        content.append(types.ImageContent(type="image", data=image.b64, mime_type=image.mime_type))
    return types.CallToolResult(
        content=content,
        structured_content=rendered.data,
        is_error=rendered.is_error,
    )


class SandboxServer(Server[Any]):
    """The SDK's server, holding the one sandbox its tools use (closed by :func:`serve` when it ends)."""

    sandbox: AsyncSandbox


def create_mcp_server(
    config: SandboxConfig | AsyncSandbox | Sandbox | str | None = None,
    *,
    name: str = "ec2-sandbox",
) -> SandboxServer:
    """An MCP server with the four tools, all using one sandbox.

    ``config``: a :class:`SandboxConfig`, an environment name from the configuration file, an existing
    ``AsyncSandbox``/``Sandbox``, or None for the local default.
    """
    sandbox = sandbox_for(config)

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(
                    name=spec.name, description=spec.description, input_schema=spec.input_schema(sandbox)
                )
                for spec in TOOLS
            ]
        )

    async def call(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        spec = TOOLS_BY_NAME.get(params.name)
        if spec is None:
            known = ", ".join(TOOLS_BY_NAME)
            return types.CallToolResult(
                content=[
                    types.TextContent(type="text", text=f"Unknown tool {params.name!r}; tools: {known}.")
                ],
                is_error=True,
            )
        return to_call_tool_result(await call_tool(sandbox, spec, params.arguments or {}))

    server = SandboxServer(
        name,
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call,
    )
    server.sandbox = sandbox
    return server


async def serve_stdio(server: Server[Any]) -> None:
    """Serve one client over this process's stdin and stdout until it disconnects."""
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def serve_http(
    server: Server[Any],
    port: int = 8765,
    host: str = "127.0.0.1",
    on_ready: Callable[[str], object] | None = None,
) -> None:
    """Serve streamable HTTP at ``http://{host}:{port}/mcp`` until cancelled.

    The port is bound and listening before ``on_ready(url)`` is called, so an announcement is never made
    for a port that is in use (that raises OSError first), and a client may connect as soon as it is made.
    Binds the loopback interface by default: the tools run code, so do not expose them to a network
    without putting authentication in front.
    """
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not past a listener: only TIME_WAIT
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    app = server.streamable_http_app(host=host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    if on_ready is not None:
        on_ready(f"http://{host}:{port}/mcp")
    await uvicorn.Server(config).serve(sockets=[sock])


async def serve(
    config: SandboxConfig | AsyncSandbox | Sandbox | str | None = None,
    *,
    transport: str = "stdio",
    port: int = 8765,
    host: str = "127.0.0.1",
    on_ready: Callable[[str], object] | None = None,
) -> None:
    """Create the server for ``config`` and serve it over ``transport`` ('stdio' or 'http'); for 'http',
    ``on_ready(url)`` is called once the port listens."""
    server = create_mcp_server(config)
    try:
        if transport == "stdio":
            await serve_stdio(server)
        elif transport == "http":
            await serve_http(server, port=port, host=host, on_ready=on_ready)
        else:
            raise ValueError(f"transport must be 'stdio' or 'http', not {transport!r}")
    finally:
        await server.sandbox.aclose()
