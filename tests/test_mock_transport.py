"""MockTransport: a handler answers the runner's requests; everything above the transport runs as usual."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from support.scripted_target import Outcome, ScriptedTarget, refused

from ec2_sandbox import AsyncSandbox, Sandbox, SandboxConfig, runner
from ec2_sandbox.errors import InvalidInputError, TaskNotFoundError, TransportError
from ec2_sandbox.transports import MockTransport


async def test_the_handler_gets_the_request_a_runner_reads_and_its_envelope_becomes_the_result() -> None:
    target = ScriptedTarget(Outcome(stdout="hello\n", files={"out.txt": "done"}))
    sandbox = AsyncSandbox(SandboxConfig(base_sandbox_dir="/srv/sb"), transport=MockTransport(target))
    result = await sandbox.execute_code("print('hello')", files={"in.csv": b"a,b\n"}, env_vars={"K": "v"})
    assert result.success and result.stdout == "hello\n" and result.files_created == ["out.txt"]
    assert result.transport == "mock" and result.task_hash == target.requests[0]["task_hash"]
    request = target.requests[0]
    # what a runner on a remote target reads: JSON data, contents in base64, never shell text
    assert request["v"] == runner.PROTOCOL and request["op"] == "run" and request["base_dir"] == "/srv/sb"
    assert base64.b64decode(request["code_b64"]) == b"print('hello')"
    assert request["files"] == [{"path": "in.csv", "b64": base64.b64encode(b"a,b\n").decode()}]
    assert request["env"] == {"K": "v"}
    assert await sandbox.get_task_files(result.task_hash, "out.txt") == "done"


async def test_an_async_handler_and_a_sync_facade() -> None:
    async def handler(request: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return refused("not_found", f"no task {request['task_hash']}")

    with Sandbox(transport=MockTransport(handler, target="i-0123456789abcdef0")) as sandbox:
        with pytest.raises(TaskNotFoundError, match="no task " + "a" * 32):
            sandbox.get_task_files("a" * 32)
        assert sandbox.aio.transport.target == "i-0123456789abcdef0"


async def test_refusals_and_bad_handlers() -> None:
    invalid = AsyncSandbox(transport=MockTransport(lambda r: refused("invalid_input", "offset: too big")))
    with pytest.raises(InvalidInputError, match="offset: too big"):
        await invalid.list_task_files("b" * 32)
    missing = AsyncSandbox(transport=MockTransport(lambda r: refused("environment", "no python3")))
    run = await missing.execute_code("print(1)")  # a runner refusal of a run is a result, as on a target
    assert run.termination_reason == "not_started" and run.error_message == "no python3"
    broken = AsyncSandbox(transport=MockTransport(lambda r: {"result": {}}))  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="must return the runner's envelope"):
        await broken.list_task_files("c" * 32)

    def down(request: dict[str, Any]) -> dict[str, Any]:
        raise TransportError("the target is unreachable")

    status = await AsyncSandbox(transport=MockTransport(down)).instance_status()
    assert not status.healthy and "unreachable" in status.parts[-1].message


def same_fields(real: Any, scripted: Any, where: str = "") -> list[str]:
    """Where the scripted answer's fields differ from the real runner's (values may differ; names may not)."""
    if isinstance(real, dict) and isinstance(scripted, dict):
        problems = [f"{where}.{k}: only in the runner's" for k in real.keys() - scripted.keys()]
        problems += [f"{where}.{k}: only in the scripted" for k in scripted.keys() - real.keys()]
        for key in real.keys() & scripted.keys():
            problems += same_fields(real[key], scripted[key], f"{where}.{key}")
        return problems
    if isinstance(real, list) and isinstance(scripted, list) and real and scripted:
        return same_fields(real[0], scripted[0], f"{where}[0]")
    return []


async def test_the_scripted_target_answers_with_the_runners_own_fields(tmp_base_dir: str) -> None:
    """Every answer the rendering tests script has the fields the real runner's answer to the same request
    has: when the runner's answers change, this fails and names the field."""
    long = "".join(f"line {i:05d}\n" for i in range(3000))
    scripted = ScriptedTarget(Outcome(stdout=long, stderr="warn\n", files={"out.txt": "done"}))
    answers: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    async def both(request: dict[str, Any]) -> dict[str, Any]:
        real = await asyncio.to_thread(runner.handle, request)  # the runner itself, as a target runs it
        answers.append((request["op"], real, scripted(request)))
        return real

    config = SandboxConfig(base_sandbox_dir=tmp_base_dir, max_output_chars=1000, allowed_runtimes=["python3"])
    async with AsyncSandbox(config, transport=MockTransport(both)) as sandbox:
        code = "\n".join(
            [
                "import sys",
                f"print({long!r}, end='')",
                "print('warn', file=sys.stderr)",
                "open('out.txt','w').write('done')",
            ]
        )
        run = await sandbox.execute_code(code)
        assert run.success and run.stdout_truncated, run
        await sandbox.get_files_for_model(run.task_hash)
        await sandbox.cleanup_tasks(1000)
        assert (await sandbox.instance_status()).runtimes[0].available
    assert {op for op, _, _ in answers} == {"run", "list", "read", "inventory", "probe"}
    for op, real, fake in answers:
        assert real["ok"] and fake["ok"], (op, real, fake)
        assert not same_fields(real, fake, op), same_fields(real, fake, op)
