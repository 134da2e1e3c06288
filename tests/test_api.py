"""The Python API beyond the conformance suite: sync facade, seed compatibility, logging, streaming."""

from __future__ import annotations

import asyncio
import logging

import pytest

import ec2_sandbox
from ec2_sandbox import AsyncSandbox, EC2SandboxTool, ExecutionResult, Sandbox, SandboxConfig


def test_seed_class_name_is_the_same_class() -> None:
    assert EC2SandboxTool is Sandbox


def test_sync_api_runs_and_fetches(tmp_base_dir: str) -> None:
    with Sandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir)) as sandbox:
        result = sandbox.execute_code("open('out.txt','w').write('hi'); print('ok')", files={"in.txt": "x"})
        assert isinstance(result, ExecutionResult)
        assert result.success and result.stdout == "ok\n"
        assert sandbox.get_task_files(result.task_hash) == {"in.txt": "x", "out.txt": "hi"}
        assert sandbox.get_task_files(result.task_hash, "out.txt") == "hi"
        page = sandbox.read_task_file(result.task_hash, "out.txt", offset=1)
        assert page.content == "i" and page.offset == 1 and not page.truncated
        assert sandbox.instance_status().healthy
        assert result.task_hash in sandbox.cleanup_tasks(0).removed_tasks


async def test_sync_api_works_inside_a_running_event_loop(tmp_base_dir: str) -> None:
    # Jupyter and agent frameworks call sync APIs from inside a loop; the facade must not deadlock.
    sandbox = Sandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir))
    try:
        result = await asyncio.to_thread(sandbox.execute_code, "print(2)")
        assert result.stdout == "2\n"
        assert sandbox.execute_code("print(3)").stdout == "3\n"
    finally:
        sandbox.close()


async def test_async_twins_on_the_sync_class(tmp_base_dir: str) -> None:
    sandbox = Sandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir))
    result = await sandbox.aexecute_code("print('twin')")
    assert result.stdout == "twin\n"
    assert await sandbox.aget_task_files(result.task_hash) == {}
    assert (await sandbox.ainstance_status()).healthy


async def test_streaming_callback_receives_output_in_order(tmp_base_dir: str) -> None:
    chunks: list[tuple[str, bytes]] = []
    async with AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir)) as sandbox:
        code = (
            "import sys, time\nfor i in range(5):\n    print(i)\n    time.sleep(0.1)\n"
            "print('e', file=sys.stderr)"
        )
        result = await sandbox.execute_code(code, on_output=lambda s, c: chunks.append((s, c)))
    assert result.success
    out = b"".join(c for s, c in chunks if s == "stdout")
    assert out == b"0\n1\n2\n3\n4\n"
    assert b"".join(c for s, c in chunks if s == "stderr") == b"e\n"
    assert len([c for s, c in chunks if s == "stdout"]) > 1, "output arrived in one piece, not live"


async def test_debug_log_shows_each_step_but_never_code_or_secrets(
    tmp_base_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ec2_sandbox")
    async with AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir)) as sandbox:
        await sandbox.execute_code(
            "print('TOP-SECRET-CODE')", env_vars={"API_KEY": "sk-very-secret"}, files={"f.txt": "FILEDATA"}
        )
    text = caplog.text
    assert "runner run via local" in text and "ended: exited" in text
    assert "API_KEY" in text and "f.txt" in text
    for secret in ("TOP-SECRET-CODE", "sk-very-secret", "FILEDATA"):
        assert secret not in text


async def test_disallowed_runtime_is_refused(tmp_base_dir: str) -> None:
    config = SandboxConfig(base_sandbox_dir=tmp_base_dir, allowed_runtimes=["python3"])
    async with AsyncSandbox(config) as sandbox:
        with pytest.raises(ec2_sandbox.InvalidInputError, match=r"not allowed.*python3"):
            await sandbox.execute_code("echo hi", runtime="bash")


async def test_timeout_above_the_environment_maximum_is_refused(tmp_base_dir: str) -> None:
    config = SandboxConfig(base_sandbox_dir=tmp_base_dir, max_execution_time=10)
    async with AsyncSandbox(config) as sandbox:
        with pytest.raises(ec2_sandbox.InvalidInputError, match=r"timeout: 11 .*max_execution_time \(10\)"):
            await sandbox.execute_code("print(1)", timeout=11)


async def test_session_dir_is_private_to_its_session(tmp_base_dir: str) -> None:
    async with AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir)) as sandbox:
        a = await sandbox.execute_code("open('secret.txt','w').write('a')", session_id="alice")
        b = await sandbox.execute_code(
            "import os\ntry:\n    print(open(os.environ['P']).read())\nexcept OSError:\n    print('denied')",
            session_id="bob",
            env_vars={"P": a.working_directory + "/secret.txt"},
        )
    assert b.stdout == "denied\n"


async def test_download_streams_a_large_file_page_by_page(tmp_base_dir: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    from ec2_sandbox.transports.local import LocalTransport

    # A runner in a process of its own, behind a capped channel like SSM's: pages must fit it (a runner in
    # this process hands pages over as bytes, with no channel to fit).
    channel = LocalTransport(mode="subprocess")
    channel.max_output_chars = 200_000
    async with AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir), transport=channel) as sandbox:
        code = "import os\nopen('big.bin','wb').write(os.urandom(3 * 1024 * 1024 + 7))"
        result = await sandbox.execute_code(code)
        digest = hashlib.sha256()
        pages: list[int] = []

        def sink(chunk: bytes) -> None:
            pages.append(len(chunk))
            digest.update(chunk)

        written, size = await sandbox.download_task_file(result.task_hash, "big.bin", sink)
        whole = await sandbox.get_task_files(result.task_hash, "big.bin")
    assert written == size == 3 * 1024 * 1024 + 7
    assert len(pages) > 10 and max(pages) <= 150_000
    assert isinstance(whole, bytes) and hashlib.sha256(whole).hexdigest() == digest.hexdigest()


@pytest.mark.parametrize("mode", ["inprocess", "subprocess"])
async def test_cancelling_a_local_run_kills_its_program(tmp_base_dir: str, mode: str) -> None:
    from ec2_sandbox.transports.local import LocalTransport

    config = SandboxConfig(base_sandbox_dir=tmp_base_dir)
    async with AsyncSandbox(config, transport=LocalTransport(mode=mode)) as sandbox:  # type: ignore[arg-type]
        code = "import time\nwhile True:\n    open('beat.txt', 'a').write('x')\n    time.sleep(0.05)\n"
        task = asyncio.create_task(sandbox.execute_code(code, session_id=f"cancel-{mode}", timeout=120))
        await asyncio.sleep(1.5)
        started = asyncio.get_running_loop().time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        follow = await sandbox.execute_code(
            "import os, time\nn = os.path.getsize('beat.txt')\ntime.sleep(0.5)\n"
            "print(n == os.path.getsize('beat.txt'))",
            session_id=f"cancel-{mode}",
        )
        assert follow.stdout == "True\n", "the cancelled program kept running"
        assert asyncio.get_running_loop().time() - started < 30


async def test_a_cut_stdout_is_the_programs_head_and_tail_and_fields_say_where(tmp_base_dir: str) -> None:
    """No words of ec2-sandbox in ``result.stdout``: the cut is told by fields, the rest read by task hash."""
    config = SandboxConfig(base_sandbox_dir=tmp_base_dir, max_output_chars=200)
    async with AsyncSandbox(config) as sandbox:
        result = await sandbox.execute_code("for i in range(1000):\n    print(f'{i:04d}')")
        full = await sandbox.get_task_files(result.task_hash, "@stdout")
    assert isinstance(full, str) and len(full) == result.stdout_bytes == 5000
    head, tail = result.head_and_tail("stdout")
    assert result.stdout_truncated and result.stdout == head + tail and result.stdout_head_chars == 100
    assert full.startswith(head) and full.endswith(tail) and len(tail) == 100
    assert result.stdout_omitted_bytes == 4800 and "get_task_files" not in result.stdout
    assert result.head_and_tail("stderr") == ("", "") and result.stderr_head_chars is None


def test_execute_code_takes_exactly_the_fields_of_a_run_request() -> None:
    """execute_code passes its arguments to RunRequest by name: a field missing from either side fails."""
    import inspect

    from ec2_sandbox.schema import RunRequest

    for method in (AsyncSandbox.execute_code, Sandbox.execute_code):
        params = set(inspect.signature(method).parameters) - {"self", "on_output", "on_start"}
        assert params == set(RunRequest.model_fields), method
