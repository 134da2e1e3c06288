"""``AsyncSession.delete``: a session's interpreter, work dir and /tmp go at once, and nothing else does."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox.errors import SandboxError


@pytest.fixture
async def sandbox(tmp_base_dir: str) -> AsyncIterator[AsyncSandbox]:
    async with AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir, max_execution_time=60)) as sb:
        yield sb


async def test_delete_removes_interpreter_files_and_tmp(sandbox: AsyncSandbox) -> None:
    doomed, kept = sandbox.session("doomed"), sandbox.session("kept")
    await doomed.write_files({"a/b.txt": "x"})
    await doomed.run_command("echo scratch > /tmp/note")
    assert (await doomed.run_code("x = 41\nx + 1")).results[0].text == "42"
    await kept.write_files({"keep.txt": "y"})
    work_dir = (await sandbox.list_files(session_id="doomed"))["working_directory"]
    assert os.path.isdir(work_dir)

    assert await doomed.delete() is True
    assert not os.path.exists(work_dir)
    assert (await doomed.status())["live"] is False
    # Nothing of it comes back: a fresh interpreter, an empty work dir and an empty /tmp.
    fresh = await doomed.run_code("'x' in globals()")
    assert fresh.results[0].text == "False" and fresh.state == "new"
    assert await doomed.list_files() == []
    assert (await doomed.run_command("test ! -e /tmp/note")).success
    assert [f["path"] for f in await kept.list_files()] == ["keep.txt"]

    assert await sandbox.session("never-opened").delete() is False


async def test_a_session_in_use_is_not_deleted(sandbox: AsyncSandbox) -> None:
    busy = sandbox.session("busy")
    await busy.write_files({"keep.txt": "k"})
    running = asyncio.create_task(busy.run_command("sleep 3"))
    await asyncio.sleep(1)
    with pytest.raises(SandboxError, match="'busy' was not removed"):
        await busy.delete()
    assert (await running).success
    assert [f["path"] for f in await busy.list_files()] == ["keep.txt"]
    assert await busy.delete() is True
