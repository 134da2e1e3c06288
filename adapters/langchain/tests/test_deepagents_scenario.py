"""Deep Agents' own agent loop (``create_deep_agent``) on EC2SandboxBackend, driven by a scripted model.

The application moves a data file in and the report out with ``upload_files``/``download_files``: neither
passes through the model. The agent's tools (ls, write_file, edit_file, read_file, grep, glob, execute) run
in the sandbox, and what one call leaves (files, /tmp) is there for the next.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from deepagents import create_deep_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from ec2_sandbox import SandboxConfig
from ec2_sandbox_langchain import EC2SandboxBackend

#: One turn of the script: given the tool messages so far (by call id), the calls to make (None: answer).
Turn = Callable[[dict[str, ToolMessage]], list[dict[str, Any]] | None]


class ScriptedDeepAgentModel(GenericFakeChatModel):
    """A chat model that plays scripted turns and keeps every message it was shown."""

    turns: list[Any]
    seen: list[BaseMessage] = Field(default_factory=list)
    bound: list[str] = Field(default_factory=list)

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedDeepAgentModel:  # type: ignore[override]
        self.bound = [getattr(t, "name", None) or t["name"] for t in tools]
        return self

    def _generate(
        self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any
    ) -> ChatResult:  # type: ignore[no-untyped-def]
        self.seen = list(messages)
        results = {m.tool_call_id: m for m in messages if isinstance(m, ToolMessage)}
        turn = self.turns.pop(0) if self.turns else None
        calls = turn(results) if turn is not None else None
        if not calls:
            message = AIMessage(content="The report is ready.")
        else:
            message = AIMessage(content="", tool_calls=[dict(c, type="tool_call") for c in calls])
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs: Any) -> ChatResult:  # type: ignore[no-untyped-def]
        return self._generate(messages)


def call(call_id: str, name: str, **args: Any) -> dict[str, Any]:
    return {"id": call_id, "name": name, "args": args}


@pytest.fixture
def backend(tmp_base_dir: str) -> Iterator[EC2SandboxBackend]:
    made = EC2SandboxBackend(
        SandboxConfig(base_sandbox_dir=tmp_base_dir, max_execution_time=60), session_id="analysis"
    )
    yield made
    made.close()


ANALYZE = """\
import csv, json
rows = list(csv.DictReader(open("data/sales.csv")))
total = sum(int(r["amount"]) for r in rows)
json.dump({"rows": len(rows), "total": total, "unit": "EUR"}, open("out/report.json", "w"))
print("wrote out/report.json")
"""


def scenario(root: str) -> list[Turn]:
    def expect(results: dict[str, ToolMessage], call_id: str, *parts: str, error: bool = False) -> str:
        text = str(results[call_id].content)
        assert (results[call_id].status == "error") == error, (call_id, text)
        for part in parts:
            assert part in text, (call_id, part, text)
        return text

    def first(results: dict[str, ToolMessage]) -> list[dict[str, Any]]:
        return [
            call("ls", "ls", path=f"{root}/data"),
            call("write", "write_file", file_path=f"{root}/analyze.py", content=ANALYZE),
            call("prep", "execute", command="mkdir -p out && echo 41 > /tmp/counter"),
        ]

    def second(results: dict[str, ToolMessage]) -> list[dict[str, Any]]:
        expect(results, "ls", f"{root}/data/sales.csv")
        expect(results, "write", "analyze.py")
        # The unit was wrong: fix it in place. (The calls of one turn run concurrently: the script runs in
        # the next one.)
        return [
            call("edit", "edit_file", file_path=f"{root}/analyze.py", old_string='"EUR"', new_string='"USD"')
        ]

    def third(results: dict[str, ToolMessage]) -> list[dict[str, Any]]:
        expect(results, "edit", "analyze.py")
        # Run the script, and use what an earlier call left in /tmp.
        return [call("run", "execute", command="python analyze.py && echo $(( $(cat /tmp/counter) + 1 ))")]

    def fourth(results: dict[str, ToolMessage]) -> list[dict[str, Any]]:
        expect(results, "run", "wrote out/report.json", "42", "succeeded")
        return [
            call("grep", "grep", pattern="USD", path=root),
            call("glob", "glob", pattern="**/*.json", path=root),
            call("read", "read_file", file_path=f"{root}/analyze.py", limit=3),
            call("planted", "write_file", file_path="/usr/lib/planted.py", content="print('no')"),
        ]

    def fifth(results: dict[str, ToolMessage]) -> None:
        expect(results, "grep", f"{root}/analyze.py")
        expect(results, "glob", f"{root}/out/report.json")
        read = expect(results, "read", "import csv, json")
        assert "print(" not in read  # limit=3: the first three lines only
        # The read-only root refuses the write: a tool error for the model, and the run goes on.
        expect(results, "planted", "permission_denied", error=True)
        return None

    return [first, second, third, fourth, fifth]


async def test_a_deep_agent_works_in_the_sandbox_while_files_bypass_the_model(
    backend: EC2SandboxBackend,
) -> None:
    root = backend.working_directory
    marker = f"row-{secrets.token_hex(8)}"
    rows = "".join(f"{marker if i == 500 else 'north'},{i % 7}\n" for i in range(2000))
    data = ("region,amount\n" + rows).encode()
    assert (await backend.aupload_files([(f"{root}/data/sales.csv", data)]))[0].error is None

    model = ScriptedDeepAgentModel(messages=iter(()), turns=scenario(root))
    agent = create_deep_agent(model=model, backend=backend, system_prompt=f"Work in {root}.")
    state = await agent.ainvoke({"messages": [HumanMessage("Total the sales in data/sales.csv.")]})

    assert state["messages"][-1].content == "The report is ready."
    assert model.turns == []  # every scripted turn was played
    assert {"ls", "read_file", "write_file", "edit_file", "glob", "grep", "execute"} <= set(model.bound)

    [report] = await backend.adownload_files([f"{root}/out/report.json"])
    assert report.error is None and report.content is not None
    expected = {"rows": 2000, "total": sum(i % 7 for i in range(2000)), "unit": "USD"}
    assert json.loads(report.content) == expected
    # Neither the data nor the report went through the model: no message it was shown holds them.
    shown = "\n".join(str(m.content) for m in model.seen)
    assert marker not in shown
    assert str(expected["total"]) not in shown

    # The same session's persistent interpreter picks up what the agent made, and keeps it between cells.
    await backend.session.run_code("import json\nreport = json.load(open('out/report.json'))")
    cell = await backend.session.run_code("report['total'] * 2")
    assert cell.results[0].text == str(expected["total"] * 2)
