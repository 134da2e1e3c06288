"""The LangChain tools in a tool-calling loop, in LangGraph's ToolNode and in ``create_agent``."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field
from support.scenario import Received, Script

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox_langchain import EC2SandboxToolkit, create_langchain_tools


def received_from(messages: list[BaseMessage]) -> dict[str, Received]:
    out: dict[str, Received] = {}
    for m in messages:
        if not isinstance(m, ToolMessage):
            continue
        if isinstance(m.content, str):
            out[m.tool_call_id] = Received(m.content, [], m.status == "error")
            continue
        texts = [b["text"] for b in m.content if isinstance(b, dict) and b.get("type") == "text"]
        images = [
            (b["mime_type"], base64.b64decode(b["base64"]))
            for b in m.content
            if isinstance(b, dict) and b.get("type") == "image"
        ]
        out[m.tool_call_id] = Received("\n".join(texts), images, m.status == "error")
    return out


class ScriptedChatModel(GenericFakeChatModel):
    """A chat model that plays a :class:`Script` and records the tools it was bound to."""

    script: Any
    bound: list[dict[str, Any]] = Field(default_factory=list)

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        self.bound = [convert_to_openai_tool(t) for t in tools]
        self.script.tool_names_seen.append([t["function"]["name"] for t in self.bound])
        for t in self.bound:
            self.script.schemas_seen[t["function"]["name"]] = t["function"]["parameters"]
        return self

    def _generate(
        self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any
    ) -> ChatResult:  # type: ignore[no-untyped-def]
        calls = self.script.next_turn(received_from(messages))
        if calls is None:
            message = AIMessage(content="All done.")
        else:
            message = AIMessage(
                content="",
                tool_calls=[{"name": c.name, "args": c.args, "id": c.id, "type": "tool_call"} for c in calls],
            )
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs: Any) -> ChatResult:  # type: ignore[no-untyped-def]
        return self._generate(messages)


def scripted_model(script: Script) -> ScriptedChatModel:
    return ScriptedChatModel(messages=iter(()), script=script)


def check_schema(script: Script) -> None:
    script.check_listing()
    assert "python3" in script.schemas_seen["ec2_code_execution"]["properties"]["runtime"]["enum"]


async def test_tool_calling_loop(sandbox: AsyncSandbox) -> None:
    script = Script()
    tools = create_langchain_tools(sandbox)
    by_name = {t.name: t for t in tools}
    model = scripted_model(script).bind_tools(tools)
    messages: list[BaseMessage] = [HumanMessage("Run some code for me.")]
    while True:
        ai = await model.ainvoke(messages)
        messages.append(ai)
        if not ai.tool_calls:
            break
        # the calls of one turn run concurrently, as LangGraph's ToolNode runs them
        messages += await asyncio.gather(*(by_name[c["name"]].ainvoke(c) for c in ai.tool_calls))
    assert messages[-1].content == "All done."
    script.check(images=True)
    check_schema(script)
    first = next(m for m in messages if isinstance(m, ToolMessage) and m.tool_call_id == "call_1")
    assert first.artifact["data"]["success"] is True
    chart = next(m for m in messages if isinstance(m, ToolMessage) and m.tool_call_id == "call_10")
    assert chart.artifact["images"][0]["data"].startswith(b"\x89PNG")


async def test_create_agent_with_toolnode(sandbox: AsyncSandbox) -> None:
    """LangGraph's ToolNode (inside create_agent) injects its runtime into any argument named
    'runtime'; the tools' JSON-schema args keep the model's 'runtime' argument intact."""
    from langchain.agents import create_agent

    script = Script()
    agent = create_agent(scripted_model(script), tools=EC2SandboxToolkit(config=sandbox).get_tools())
    state = await agent.ainvoke({"messages": [HumanMessage("Run some code for me.")]})
    assert state["messages"][-1].content == "All done."
    script.check(images=True)
    check_schema(script)
    node_run = script.by("call_2").text
    assert "Runtime: node" in node_run, node_run


async def test_toolnode_directly(sandbox: AsyncSandbox) -> None:
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode

    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode(create_langchain_tools(sandbox)))
    graph.add_edge(START, "tools")
    node = graph.compile()
    call = {
        "name": "ec2_code_execution",
        "args": {"code": "console.log(process.version.startsWith('v'))", "runtime": "node"},
        "id": "t1",
        "type": "tool_call",
    }
    bad = {"name": "ec2_get_files", "args": {"task_hash": "../etc"}, "id": "t2", "type": "tool_call"}
    out = await node.ainvoke({"messages": [AIMessage(content="", tool_calls=[call, bad])]})
    got = received_from(out["messages"])
    assert "true" in got["t1"].text and "Runtime: node" in got["t1"].text
    assert got["t2"].is_error and "task_hash" in got["t2"].text and "call the tool again" in got["t2"].text


def test_sync_invoke_and_forms(config: SandboxConfig) -> None:
    tool = create_langchain_tools(config)[0]
    message = tool.invoke(
        {"name": tool.name, "args": {"code": "print(6 * 7)"}, "id": "s1", "type": "tool_call"}
    )
    assert "42" in message.content[0]["text"]
    again = tool.invoke({"code": "print(7 * 7)"})  # a second synchronous call, its own loop again
    assert "49" in again[0]["text"]  # content only, outside a tool call
    assert json.dumps(tool.args_schema)  # a plain JSON schema, not a pydantic model
    toolkit = EC2SandboxToolkit(config=config)
    assert toolkit.get_tools()[0].sandbox is toolkit.get_tools()[1].sandbox
