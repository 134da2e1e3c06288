"""A ``SandboxAgent`` in ``Runner.run``, driven by the SDK's scripted model, working in an ec2-sandbox
session through EC2SandboxClient: shell commands, patches, results read back; state kept across calls
and runs; files moved in and out by the application, never through the model."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

from agents import Runner
from agents.run import RunConfig
from agents.sandbox import Manifest, SandboxAgent, SandboxRunConfig
from agents.sandbox.entries import File
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call
from openai.types.responses import ResponseCustomToolCall

from ec2_sandbox import AsyncSandbox
from ec2_sandbox_openai_agents import EC2SandboxClient

SALES = "region,amount\nnorth,10\nsouth,32\n"


def shell(call_id: str, cmd: str) -> Any:
    return function_call("exec_command", {"cmd": cmd, "yield_time_ms": 30000}, call_id=call_id)


def patch(call_id: str, body: str) -> ResponseCustomToolCall:
    return ResponseCustomToolCall(
        type="custom_tool_call",
        call_id=call_id,
        name="apply_patch",
        input=f"*** Begin Patch\n{body}*** End Patch\n",
    )


def outputs(model: ScriptedModel) -> dict[str, str]:
    """What the model was given back for each tool call, by call id (read from its last input)."""
    seen: dict[str, str] = {}
    last = model.last_call
    assert last is not None
    for raw in last.input if isinstance(last.input, list) else []:
        item = raw if isinstance(raw, dict) else raw.model_dump()
        if item.get("type") in ("function_call_output", "custom_tool_call_output"):
            output = item["output"]
            seen[item["call_id"]] = output if isinstance(output, str) else str(output)
    return seen


def agent_with(steps: Sequence[Sequence[Any]], final: str) -> tuple[SandboxAgent[Any], ScriptedModel]:
    model = ScriptedModel(
        [ModelStep(output=list(step)) for step in steps] + [ModelStep(output=[assistant_message(final)])]
    )
    agent = SandboxAgent(
        name="analyst",
        instructions="Answer from the data in the workspace; write the report to report.md.",
        model=model,
    )
    return agent, model


async def test_sandbox_agent_works_in_an_ec2_session(sandbox: AsyncSandbox, base_dir: str) -> None:
    client = EC2SandboxClient(sandbox)
    # Files in, without the model: one through the manifest, one written by the application.
    session = await client.create(manifest=Manifest(entries={"data/sales.csv": File(content=SALES.encode())}))
    async with session:
        await session.write(Path("notes/brief.txt"), io.BytesIO(b"Report the total amount.\n"))
        run_config = RunConfig(sandbox=SandboxRunConfig(session=session))

        agent, model = agent_with(
            [
                [
                    shell(
                        "c1",
                        'cat notes/brief.txt && python3 -c "import csv; '
                        "print(sum(int(r['amount']) for r in csv.DictReader(open('data/sales.csv'))))\" "
                        "| tee /tmp/total",
                    )
                ],
                [patch("c2", "*** Add File: report.md\n+# Sales report\n+total: TBD\n")],
                [patch("c3", "*** Update File: report.md\n@@\n # Sales report\n-total: TBD\n+total: 42\n")],
                [shell("c4", "cat report.md /tmp/total; pwd")],
                # Mistakes a model makes come back to it as results; the run goes on.
                [shell("c5", "cat missing.txt"), patch("c6", "*** Add File: ../escape.md\n+x\n")],
            ],
            final="The total is 42; see report.md.",
        )
        result = await Runner.run(agent, "What is the total amount?", run_config=run_config, max_turns=10)
        assert result.final_output == "The total is 42; see report.md."
        model.assert_complete()
        seen = outputs(model)
        root = session.state.manifest.root
        assert "Report the total amount." in seen["c1"] and "42" in seen["c1"]
        assert "report.md" in seen["c2"] and "report.md" in seen["c3"]
        # State kept across calls: the patched file and the /tmp file of the first command.
        assert "# Sales report\ntotal: 42" in seen["c4"] and "42\n" + root in seen["c4"]
        assert "Process exited with code 1" in seen["c5"] and "missing.txt: No such file" in seen["c5"]
        assert "must not escape root" in seen["c6"] and not os.path.exists(
            os.path.join(os.path.dirname(root), "escape.md")
        )
        # The tools the SDK gave the model are the sandbox's own.
        last = model.last_call
        assert last is not None
        assert {"exec_command", "apply_patch"} <= {tool.name for tool in last.tools}

        # A second run in the same session finds what the first left, in the work dir and in /tmp.
        agent, model = agent_with(
            [[shell("d1", "cat /tmp/total && grep total report.md")]], final="Still 42."
        )
        again = await Runner.run(agent, "Is the total still there?", run_config=run_config, max_turns=4)
        assert again.final_output == "Still 42."
        assert "42\ntotal: 42" in outputs(model)["d1"]

        # Files out, without the model: the application reads the report the agent wrote.
        report = (await session.read(Path("report.md"))).read()
        assert report == b"# Sales report\ntotal: 42"  # the SDK's patch editor ends a file without a newline
    await client.delete(session)
    assert not os.path.exists(root)


async def test_runner_owned_session_is_created_and_deleted(sandbox: AsyncSandbox, base_dir: str) -> None:
    """With only a client in the run config, the runner creates the session and deletes it at the end."""
    client = EC2SandboxClient(sandbox)
    agent, model = agent_with(
        [[shell("e1", "echo $((6*7)) > answer.txt && cat answer.txt && pwd")]], final="42"
    )
    result = await Runner.run(
        agent, "Compute 6*7.", run_config=RunConfig(sandbox=SandboxRunConfig(client=client)), max_turns=4
    )
    assert result.final_output == "42"
    output = outputs(model)["e1"]
    assert "42" in output
    work_dir = next(
        line for line in output.splitlines() if line.startswith(os.path.join(base_dir, "sessions", "oai-"))
    )
    assert not os.path.exists(work_dir)
