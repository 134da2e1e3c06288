"""Sessions beyond the conformance suite: cleanup and status know the interpreters, tools render cells."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid

import pytest

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox.presentation import call_tool
from ec2_sandbox.testing.session_conformance import PNG_1x1
from ec2_sandbox.tools import TOOLS

SPECS = {spec.name: spec for spec in TOOLS}


@pytest.fixture
async def sandbox(tmp_base_dir: str):  # type: ignore[no-untyped-def]
    async with AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir)) as sb:
        yield sb


async def test_cleanup_closes_an_idle_interpreter_and_skips_a_busy_one(sandbox: AsyncSandbox) -> None:
    idle, busy = (
        sandbox.session("idle-" + uuid.uuid4().hex[:6]),
        sandbox.session("busy-" + uuid.uuid4().hex[:6]),
    )
    await idle.run_code("x = 1")
    await busy.run_code("import time")
    running = asyncio.create_task(busy.run_code("time.sleep(4)\n'done'"))
    for _ in range(100):  # until the busy cell is in
        status = await sandbox.instance_status()
        if any(i.busy for i in status.interpreters):
            break
        await asyncio.sleep(0.05)
    live = {i.session_id: i for i in status.interpreters}
    assert set(live) == {idle.id, busy.id} and live[busy.id].busy and not live[idle.id].busy
    assert live[idle.id].memory_kb and live[idle.id].memory_kb > 1000  # resident memory of a real interpreter
    result = await sandbox.cleanup_tasks(0)
    removed = {e.id for e in result.removed if e.kind == "session"}
    skipped = {e.id for e in result.skipped if e.kind == "session"}
    assert idle.id in removed and busy.id in skipped, result
    assert (await running).results[0].text == "'done'"  # the busy cell finished undisturbed
    after = await sandbox.instance_status()
    assert [i.session_id for i in after.interpreters] == [busy.id]
    again = await idle.run_code("'x' in globals()")
    assert again.state == "new" and again.state_lost is not None and again.state_lost.reason == "cleanup"
    await idle.close()
    await busy.close()


async def test_a_stateful_tool_call_renders_value_error_and_images(sandbox: AsyncSandbox) -> None:
    spec = SPECS["ec2_code_execution"]
    sid = "tool-" + uuid.uuid4().hex[:6]
    first = await call_tool(sandbox, spec, {"code": "n = 6", "session_id": sid, "stateful": True})
    assert not first.is_error and "Cell: [1]" in first.text, first.text
    png = base64.b64encode(PNG_1x1).decode()
    code = (
        "import base64\n"
        f"class P:\n    def _repr_png_(self): return base64.b64decode({png!r})\n"
        "display(P())\nn * 7"
    )
    shown = await call_tool(sandbox, spec, {"code": code, "session_id": sid, "stateful": True})
    assert "Out[1] (text/plain):\n42" in shown.text, shown.text
    assert [img.data for img in shown.images] == [PNG_1x1]
    assert shown.data["results"][1]["data"]["text/plain"] == "42"
    failed = await call_tool(sandbox, spec, {"code": "n / 0", "session_id": sid, "stateful": True})
    assert "Exception: ZeroDivisionError" in failed.text and "variables kept" in failed.text
    refused = await call_tool(sandbox, spec, {"code": "1", "stateful": True})
    assert refused.is_error and "session_id" in refused.text
    files = await call_tool(sandbox, SPECS["ec2_get_files"], {"session_id": sid})
    assert not files.is_error and f"Session: {sid}" in files.text
    await sandbox.session(sid).close()


async def test_an_image_in_a_session_bigger_than_the_text_budget_arrives_whole(tmp_base_dir: str) -> None:
    """ec2_get_files reads a cut image whole again from where it came: the session's work dir."""
    webp = b"RIFF" + bytes(4) + b"WEBP" + os.urandom(50000)
    config = SandboxConfig(base_sandbox_dir=tmp_base_dir, max_output_chars=300)
    async with AsyncSandbox(config) as sandbox:
        session = sandbox.session("image-" + uuid.uuid4().hex[:6])
        await session.write_files({"big.webp": webp})
        got = await call_tool(
            sandbox, SPECS["ec2_get_files"], {"session_id": session.id, "filename": "big.webp"}
        )
        assert not got.is_error, got.text
        assert [(i.mime_type, i.data) for i in got.images] == [("image/webp", webp)]
        await session.close()


async def test_session_ids_and_paths_are_checked_before_anything_runs(sandbox: AsyncSandbox) -> None:
    from ec2_sandbox.errors import InvalidInputError

    for bad in ("../x", "a b", "", "x" * 65):
        with pytest.raises(InvalidInputError, match="session_id"):
            sandbox.session(bad)
    session = sandbox.session("paths-" + uuid.uuid4().hex[:6])
    for bad in ("../escape", "/etc/passwd", "a/../../b"):
        with pytest.raises(InvalidInputError):
            await session.write_files({bad: "x"})
        with pytest.raises(InvalidInputError):
            await session.remove_files(bad)
    with pytest.raises(InvalidInputError, match="Python"):
        await session.run_code("console.log(1)", language="node")


async def test_a_cells_output_streams_while_it_runs(sandbox: AsyncSandbox) -> None:
    session = sandbox.session("stream-" + uuid.uuid4().hex[:6])
    seen: list[tuple[float, bytes]] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    code = "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.5)"
    result = await session.run_code(code, on_output=lambda stream, data: seen.append((loop.time(), data)))
    ended = loop.time()
    assert result.success and result.stdout == "tick 0\ntick 1\ntick 2\n", result
    assert b"".join(data for _, data in seen) == result.stdout.encode()
    # The first tick arrived while the cell was still running, not with its result.
    assert seen and seen[0][0] - started < ended - started - 0.5, (seen, ended - started)
    await session.close()
