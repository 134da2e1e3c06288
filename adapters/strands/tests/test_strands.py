"""The Strands tools inside a real Strands ``Agent`` loop, driven by a scripted ``Model``."""

from __future__ import annotations

import pytest
from strands import Agent
from support.scenario import Script
from support.strands_model import ScriptedModel

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox_strands import create_strands_tool, create_strands_tools


async def test_agent_loop(sandbox: AsyncSandbox) -> None:
    script = Script()
    agent = Agent(model=ScriptedModel(script), tools=create_strands_tools(sandbox), callback_handler=None)
    result = await agent.invoke_async("Run some code for me.")
    assert "All done." in str(result)
    script.check(images=True)
    script.check_listing()
    # the structured JSON travels with the text
    message = next(
        m for m in agent.messages if any("toolResult" in b for b in m["content"])
    )  # first tool results
    blocks = [b["toolResult"] for b in message["content"] if "toolResult" in b]
    data = next(c["json"] for c in blocks[0]["content"] if "json" in c)
    assert data["success"] is True and data["runtime"] == "python3"
    assert "stdout" not in data  # carried once, in the text


def test_config_forms(config: SandboxConfig) -> None:
    tools = create_strands_tool(config)  # the original tool's name still works
    assert [t.tool_name for t in tools] == [t.tool_name for t in create_strands_tools(config)]
    assert tools[0].sandbox.config is config
    assert all(t.sandbox is tools[0].sandbox for t in tools)
    assert create_strands_tools(None)[0].sandbox.config.resolved_transport == "local"
    with pytest.raises(TypeError):
        create_strands_tools(42)  # type: ignore[arg-type]
