"""The MCP server: an MCP client session in-process, over stdio with ``ec2-sandbox mcp`` as a subprocess,
and over streamable HTTP on 127.0.0.1. The client plays the scripted model: it sends each turn's calls
at once and decides the next turn from the results it received."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from support.scenario import PLUGIN_RUNTIME, Received, Script

from ec2_sandbox import AsyncSandbox
from ec2_sandbox.cli import EXIT_FAILED
from ec2_sandbox_mcp import create_mcp_server

REPO = Path(__file__).resolve().parents[3]
ENTRY_POINT = os.path.join(os.path.dirname(sys.executable), "ec2-sandbox")


def received(result: types.CallToolResult) -> Received:
    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
    images = [
        (c.mime_type, base64.b64decode(c.data)) for c in result.content if isinstance(c, types.ImageContent)
    ]
    return Received("\n".join(texts), images, bool(result.is_error))


async def play(client: Client, script: Script) -> None:
    listed = await client.list_tools()
    script.tool_names_seen.append([t.name for t in listed.tools])
    for tool in listed.tools:
        script.schemas_seen[tool.name] = tool.input_schema
    results: dict[str, Received] = {}
    while (calls := script.next_turn(results)) is not None:
        outs = await asyncio.gather(*(client.call_tool(c.name, c.args) for c in calls))
        results = {c.id: received(out) for c, out in zip(calls, outs, strict=True)}


async def test_in_process_session(sandbox: AsyncSandbox) -> None:
    script = Script()
    async with Client(create_mcp_server(sandbox)) as client:
        await play(client, script)
        structured = await client.call_tool("ec2_code_execution", {"code": "print('sc')"})
        unknown = await client.call_tool("no_such_tool", {})
    script.check(images=True)
    script.check_listing()
    assert structured.structured_content["success"] is True
    assert structured.structured_content["stdout"] == "sc\n"
    assert unknown.is_error and "ec2_code_execution" in unknown.content[0].text


def _server_env(base_dir: str, plugin_path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EC2_SANDBOX_")}
    env["EC2_SANDBOX_BASE_SANDBOX_DIR"] = base_dir
    env["EC2_SANDBOX_MAX_OUTPUT_CHARS"] = "4000"
    # the subprocess discovers the test plugin through its entry point, as an installed plugin
    env["PYTHONPATH"] = plugin_path + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _uv() -> str:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    return uv


async def test_stdio_subprocess(base_dir: str, plugin_path: str) -> None:
    params = StdioServerParameters(
        command=_uv(),
        args=["run", "--project", str(REPO), "--frozen", "--no-sync", "ec2-sandbox", "mcp"],
        env=_server_env(base_dir, plugin_path),
        cwd=base_dir,  # no config.json here: the settings come from EC2_SANDBOX_* variables
    )
    script = Script()
    async with Client(params) as client:
        await play(client, script)
    script.check(images=True)
    script.check_listing()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: How long a server may take to start on a loaded machine; it is waited on, not slept through.
START_DEADLINE = 120


async def start_http_server(port: int, env: dict[str, str], cwd: str) -> asyncio.subprocess.Process:
    """`ec2-sandbox mcp --transport http` once it announces that it listens (the announcement comes
    after the bind). A server that exits or stays silent fails the test with what it printed."""
    proc = await asyncio.create_subprocess_exec(
        ENTRY_POINT,
        "mcp",
        "--transport",
        "http",
        "--port",
        str(port),
        env=env,
        cwd=cwd,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), START_DEADLINE)
    except TimeoutError:
        proc.kill()
        pytest.fail(f"the MCP server did not announce itself within {START_DEADLINE} s")
    assert f"http://127.0.0.1:{port}/mcp".encode() in line, line + await proc.stderr.read()
    return proc


async def test_streamable_http(base_dir: str, plugin_path: str) -> None:
    port = _free_port()
    proc = await start_http_server(port, _server_env(base_dir, plugin_path), base_dir)
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        async with Client(url) as client:
            out = await client.call_tool(
                "ec2_code_execution", {"code": "console.log('over http', 1 + 1)", "runtime": "node"}
            )
            listed = await client.list_tools()
        assert "over http 2" in out.content[0].text, out
        assert PLUGIN_RUNTIME in listed.tools[0].input_schema["properties"]["runtime"]["enum"]
        # DNS-rebinding protection: a request naming another host is refused
        async with httpx.AsyncClient() as http:
            r = await http.post(url, headers={"Host": "evil.example:80"}, json={})
        assert r.status_code in (400, 403, 421), r.status_code
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


def test_busy_port_is_one_line_and_no_announcement(base_dir: str, plugin_path: str) -> None:
    """A port in use is refused before anything says the server is serving there."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [ENTRY_POINT, "mcp", "--transport", "http", "--port", str(port)],
            env=_server_env(base_dir, plugin_path),
            cwd=base_dir,
            capture_output=True,
            text=True,
            timeout=START_DEADLINE,
        )
    assert proc.returncode == EXIT_FAILED, proc.stderr
    assert proc.stderr.splitlines() == [
        f"ec2-sandbox: cannot listen on 127.0.0.1:{port}: Address already in use; choose another --port"
    ]


def test_cli_without_the_mcp_distribution() -> None:
    """`ec2-sandbox mcp` names the missing distribution instead of a traceback."""
    code = (
        "import sys; sys.modules['ec2_sandbox_mcp'] = None\n"
        "from ec2_sandbox.cli import main\n"
        "sys.exit(main(['mcp']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_FAILED, proc.stderr
    assert "pip install ec2-sandbox-mcp" in proc.stderr, proc.stderr


async def test_agents_sdk_as_mcp_client(base_dir: str, plugin_path: str) -> None:
    """The Agents SDK's own MCP support drives `ec2-sandbox mcp` over stdio in a Runner.run loop."""
    os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
    from agents import Agent, Runner
    from agents.mcp import MCPServerStdio
    from agents.testing import ModelCall, ModelStep, ScriptedModel, assistant_message, function_call
    from support.agents_sdk import received_from

    seen: dict[str, Received] = {}
    tools_seen: list[str] = []

    def first(call: ModelCall) -> list[Any]:
        tools_seen.extend(t.name for t in call.tools)
        return [
            function_call("ec2_code_execution", {"code": "print('via agents mcp', 2 ** 10)"}, call_id="m1")
        ]

    def second(call: ModelCall) -> list[Any]:
        seen.update(received_from(call.input))
        return [assistant_message("done")]

    server = MCPServerStdio(
        params={
            "command": ENTRY_POINT,
            "args": ["mcp"],
            "env": _server_env(base_dir, plugin_path),
            "cwd": base_dir,
        },
        client_session_timeout_seconds=60,
    )
    async with server:
        model = ScriptedModel([ModelStep.respond(first), ModelStep.respond(second)])
        agent = Agent(name="mcp-user", model=model, mcp_servers=[server])
        result = await Runner.run(agent, "go", max_turns=4)
    assert result.final_output == "done"
    assert "ec2_code_execution" in tools_seen and "ec2_get_files" in tools_seen
    assert "via agents mcp 1024" in seen["m1"].text, seen


async def test_strands_as_mcp_client(base_dir: str, plugin_path: str) -> None:
    """Strands' MCPClient loads the tools from `ec2-sandbox mcp` and an Agent calls them."""
    from mcp.client.stdio import stdio_client
    from strands import Agent
    from strands.tools.mcp import MCPClient
    from support.strands_model import ScriptedModel

    params = StdioServerParameters(
        command=ENTRY_POINT, args=["mcp"], env=_server_env(base_dir, plugin_path), cwd=base_dir
    )

    class OneCall(Script):
        def next_turn(self, received: dict[str, Received]) -> Any:
            self.received.update(received)
            self.turn += 1
            if self.turn == 1:
                return [self._call("ec2_code_execution", code="print('via strands mcp', 3 * 14)")]
            self.finished = True
            return None

    script = OneCall()
    with MCPClient(lambda: stdio_client(params)) as client:
        agent = Agent(model=ScriptedModel(script), tools=client.list_tools_sync(), callback_handler=None)
        await agent.invoke_async("go")
    assert "ec2_code_execution" in script.tool_names_seen[0]
    assert "via strands mcp 42" in script.by("call_1").text
