"""The Strands tools inside a real Strands ``Agent`` loop, driven by a scripted ``Model``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from strands import Agent
from strands.models.model import Model

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox_strands import create_strands_tool, create_strands_tools

from .scenario import Received, Script


class ScriptedModel(Model):
    """A Strands model that plays a :class:`Script`, reading tool results from the messages it is sent."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.config: dict[str, Any] = {}

    def update_config(self, **model_config: Any) -> None:
        self.config.update(model_config)

    def get_config(self) -> Any:
        return self.config

    async def structured_output(self, output_model, prompt, system_prompt=None, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError
        yield {}

    async def stream(  # type: ignore[override]
        self, messages, tool_specs=None, system_prompt=None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        self.script.tool_names_seen.append([spec["name"] for spec in tool_specs or []])
        for spec in tool_specs or []:
            self.script.schemas_seen[spec["name"]] = spec["inputSchema"]["json"]
        received: dict[str, Received] = {}
        for message in messages:
            for block in message["content"]:
                result = block.get("toolResult")
                if result is None:
                    continue
                texts = [c["text"] for c in result["content"] if "text" in c]
                images = [
                    (f"image/{c['image']['format']}", c["image"]["source"]["bytes"])
                    for c in result["content"]
                    if "image" in c
                ]
                received[result["toolUseId"]] = Received(
                    "\n".join(texts), images, is_error=result["status"] == "error"
                )
        calls = self.script.next_turn(received)
        yield {"messageStart": {"role": "assistant"}}
        if calls is None:
            yield {"contentBlockStart": {"start": {}}}
            yield {"contentBlockDelta": {"delta": {"text": "All done."}}}
            yield {"contentBlockStop": {}}
            yield {"messageStop": {"stopReason": "end_turn"}}
            return
        for call in calls:
            yield {"contentBlockStart": {"start": {"toolUse": {"toolUseId": call.id, "name": call.name}}}}
            yield {"contentBlockDelta": {"delta": {"toolUse": {"input": json.dumps(call.args)}}}}
            yield {"contentBlockStop": {}}
        yield {"messageStop": {"stopReason": "tool_use"}}


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
