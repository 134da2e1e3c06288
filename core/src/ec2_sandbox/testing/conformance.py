"""The behaviour every transport must show, as a pytest suite to subclass.

Usage in a transport's tests::

    from ec2_sandbox.testing.conformance import ConformanceSuite

    class TestMyTransport(ConformanceSuite):
        @pytest.fixture
        async def sandbox(self, tmp_base_dir):
            config = SandboxConfig(base_sandbox_dir=tmp_base_dir)
            async with AsyncSandbox(config, transport=MyTransport()) as sb:
                yield sb

Everything is checked through the public API only, so the same assertions hold on the local machine, over
SSM and over SSH. Needs pytest-asyncio (``asyncio_mode = "auto"``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest

from ..errors import InvalidInputError, TaskNotFoundError
from ..sandbox import AsyncSandbox
from .session_conformance import SessionSuite, task_of

#: A child that ignores SIGTERM and keeps appending to a file: if it survived the run, the file would grow.
STUBBORN_CHILD = """
import os, signal, subprocess, sys, time
code = '''
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    with open("heartbeat.txt", "a") as fh:
        fh.write("x")
    time.sleep(0.05)
'''
subprocess.Popen([sys.executable, "-c", code])
time.sleep(60)
"""


def derived(sandbox: AsyncSandbox, **changes: Any) -> AsyncSandbox:
    """The same target and transport with other settings (limits, isolation)."""
    config = sandbox.config.model_copy(update=changes)
    return AsyncSandbox(config, transport=sandbox.transport, registry=sandbox.registry)


class ConformanceSuite(SessionSuite):
    """Subclass as ``Test<Transport>`` and provide a ``sandbox`` fixture (an :class:`AsyncSandbox`)."""

    # ------------------------------------------------------------------ runtimes and results
    @pytest.mark.parametrize(
        ("runtime", "code"),
        [
            ("python3", "import sys; print('hello from', sys.version_info[0])"),
            ("python", "print('hello from', 3)"),
            ("node", "console.log('hello from', 3)"),
            ("bash", "echo hello from $((1 + 2))"),
            ("sh", "printf 'hello from %s\\n' 3"),
        ],
    )
    async def test_each_runtime_runs(self, sandbox: AsyncSandbox, runtime: str, code: str) -> None:
        result = await sandbox.execute_code(code, runtime=runtime)
        assert result.success, result
        assert result.stdout == "hello from 3\n"
        assert result.return_code == 0
        assert result.termination_reason == "exited"
        assert result.runtime == runtime
        assert result.task_hash and result.working_directory

    async def test_exit_code_and_streams_are_separate(self, sandbox: AsyncSandbox) -> None:
        code = "import sys\nprint('to out')\nprint('to err', file=sys.stderr)\nsys.exit(3)"
        result = await sandbox.execute_code(code)
        assert not result.success
        assert result.return_code == 3
        assert result.stdout == "to out\n"
        assert result.stderr == "to err\n"
        assert result.termination_reason == "exited"
        assert "status 3" in (result.error_message or "")

    async def test_failing_program_keeps_its_traceback(self, sandbox: AsyncSandbox) -> None:
        result = await sandbox.execute_code("print('before')\nraise ValueError('boom')")
        assert not result.success and result.return_code == 1
        assert result.stdout == "before\n"
        assert "ValueError: boom" in result.stderr and "Traceback" in result.stderr

    async def test_task_hashes_are_unique_per_run(self, sandbox: AsyncSandbox) -> None:
        first = await sandbox.execute_code("print(1)")
        second = await sandbox.execute_code("print(1)")
        assert first.task_hash != second.task_hash
        assert first.working_directory != second.working_directory

    # ------------------------------------------------------------------ inputs
    async def test_input_files_text_binary_and_nested(self, sandbox: AsyncSandbox) -> None:
        blob = bytes(range(256)) * 4
        files: dict[str, str | bytes] = {
            "data/in.csv": "a,b\n1,2\n",
            "deep/er/blob.bin": blob,
            "ünï cødé.txt": "ok",
        }
        code = (
            "import hashlib\n"
            "print(open('data/in.csv').read().splitlines()[1])\n"
            "print(hashlib.sha256(open('deep/er/blob.bin','rb').read()).hexdigest())\n"
            "print(open('ünï cødé.txt').read())\n"
        )
        result = await sandbox.execute_code(code, files=files)
        assert result.success, result.stderr
        assert result.stdout.splitlines() == ["1,2", hashlib.sha256(blob).hexdigest(), "ok"]

    async def test_env_values_arrive_byte_exact(self, sandbox: AsyncSandbox) -> None:
        env = {
            "QUOTES": 'it\'s "quoted" `back`',
            "SUBST": "$(rm -rf /) ; echo pwned && $HOME",
            "MULTI": "line1\nline2\n",
            "UNICODE": "日本語 ✓",
            "EMPTY": "",
        }
        code = f"import json, os\nprint(json.dumps({{k: os.environ.get(k) for k in {sorted(env)!r}}}))"
        result = await sandbox.execute_code(code, env_vars=env)
        assert result.success, result.stderr
        import json

        assert json.loads(result.stdout) == env

    async def test_caller_environment_is_not_inherited(self, sandbox: AsyncSandbox) -> None:
        code = "import os, json; print(json.dumps(sorted(os.environ)))"
        result = await sandbox.execute_code(code)
        assert result.success
        names = set(__import__("json").loads(result.stdout))
        assert not {n for n in names if n.startswith("AWS_")}
        assert names <= {
            "PATH",
            "HOME",
            "LANG",
            "TMPDIR",
            "PYTHONUNBUFFERED",
            "PYTHONDONTWRITEBYTECODE",
            "PWD",
            "SHLVL",
            "_",
            "LC_CTYPE",
        }

    async def test_reading_stdin_does_not_hang(self, sandbox: AsyncSandbox) -> None:
        result = await sandbox.execute_code("import sys; print(repr(sys.stdin.read()))", timeout=20)
        assert result.success and result.stdout == "''\n"

    # ------------------------------------------------------------------ bad input
    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"code": ""}, "code"),
            ({"code": "   \n"}, "code"),
            ({"runtime": "cobol"}, "runtime"),
            ({"runtime": "python3; rm -rf /"}, "runtime"),
            ({"files": {"../escape.txt": "x"}}, "files"),
            ({"files": {"/etc/passwd": "x"}}, "files"),
            ({"files": {"a/../../b": "x"}}, "files"),
            ({"files": {"nul\x00name": "x"}}, "files"),
            ({"files": {"": "x"}}, "files"),
            ({"files": {"./x": "x"}}, "files"),
            ({"env_vars": {"BAD NAME": "x"}}, "env_vars"),
            ({"env_vars": {"A=B": "x"}}, "env_vars"),
            ({"env_vars": {"1ABC": "x"}}, "env_vars"),
            ({"env_vars": {"A\nB": "x"}}, "env_vars"),
            ({"env_vars": {"OK": "nul\x00value"}}, "env_vars"),
            ({"session_id": "../other"}, "session_id"),
            ({"session_id": "$(reboot)"}, "session_id"),
            ({"timeout": 0}, "timeout"),
            ({"timeout": 10**9}, "timeout"),
        ],
    )
    async def test_bad_input_is_refused_naming_the_field(
        self, sandbox: AsyncSandbox, kwargs: dict[str, Any], field: str
    ) -> None:
        args: dict[str, Any] = {"code": "print(1)", **kwargs}
        with pytest.raises(InvalidInputError) as info:
            await sandbox.execute_code(**args)
        assert str(info.value).startswith(field), str(info.value)

    async def test_runtime_error_lists_the_allowed_runtimes(self, sandbox: AsyncSandbox) -> None:
        with pytest.raises(InvalidInputError) as info:
            await sandbox.execute_code("x", runtime="fortran")
        for name in sandbox.allowed_runtimes():
            assert name in str(info.value)

    @pytest.mark.parametrize("task_hash", ["", "../../etc", "ABCDEF123456", "0123", "x" * 70, "$(id)"])
    async def test_bad_task_hash_is_refused(self, sandbox: AsyncSandbox, task_hash: str) -> None:
        with pytest.raises(InvalidInputError, match="task_hash"):
            await sandbox.get_task_files(task_hash)

    async def test_unknown_task_is_reported_as_not_found(self, sandbox: AsyncSandbox) -> None:
        with pytest.raises(TaskNotFoundError):
            await sandbox.get_task_files("0" * 32)

    # ------------------------------------------------------------------ files back
    async def test_created_files_come_back_text_and_binary(self, sandbox: AsyncSandbox) -> None:
        code = (
            "import os\nos.makedirs('out/sub', exist_ok=True)\n"
            "open('out/sub/r.txt','w').write('résultat\\n')\n"
            "open('img.bin','wb').write(bytes([0x89, 0x50, 0xff, 0x00, 0xfe]))\n"
        )
        result = await sandbox.execute_code(code, files={"given.txt": "in"})
        assert result.success, result.stderr
        assert set(result.files_created) == {"out/sub/r.txt", "img.bin", "given.txt"}
        files = await sandbox.get_task_files(task_of(result))
        assert files == {
            "given.txt": "in",
            "img.bin": bytes([0x89, 0x50, 0xFF, 0x00, 0xFE]),
            "out/sub/r.txt": "résultat\n",
        }
        assert await sandbox.get_task_files(task_of(result), "out/sub/r.txt") == "résultat\n"

    async def test_missing_file_in_task_is_not_found(self, sandbox: AsyncSandbox) -> None:
        result = await sandbox.execute_code("print(1)")
        with pytest.raises(TaskNotFoundError):
            await sandbox.get_task_files(task_of(result), "nope.txt")

    async def test_symlinks_are_never_followed_when_reading_back(self, sandbox: AsyncSandbox) -> None:
        code = "import os\nos.symlink('/etc/passwd', 'passwd')\nos.symlink('/etc', 'etc')\nprint('ok')"
        result = await sandbox.execute_code(code)
        assert result.success, result.stderr
        files = await sandbox.get_task_files(task_of(result))
        assert "passwd" not in files
        with pytest.raises(Exception, match=r"symlink|not a directory"):
            await sandbox.get_task_files(task_of(result), "passwd")
        with pytest.raises(Exception, match=r"symlink|not a directory"):
            await sandbox.get_task_files(task_of(result), "etc/passwd")

    # ------------------------------------------------------------------ output
    async def test_output_flood_is_capped_inline_and_kept_in_full(self, sandbox: AsyncSandbox) -> None:
        code = "for i in range(200000):\n    print(f'line {i:06d}')"
        result = await sandbox.execute_code(code)
        assert result.success
        full = b"".join(f"line {i:06d}\n".encode() for i in range(200000))
        assert result.stdout_truncated and result.stdout_bytes == len(full)
        assert result.stdout.startswith("line 000000\n")
        assert result.stdout.rstrip().endswith("line 199999")
        head, tail = result.head_and_tail("stdout")
        assert full.startswith(head.encode()) and full.endswith(tail.encode()) and head and tail
        assert result.stdout_omitted_bytes == len(full) - len(result.stdout.encode())
        assert len(result.stdout) <= sandbox.config.max_output_chars
        assert await sandbox.get_task_files(task_of(result), "@stdout") == full.decode()

    async def test_invalid_utf8_output_survives_byte_exact(self, sandbox: AsyncSandbox) -> None:
        code = "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe\\x80 end\\n')"
        result = await sandbox.execute_code(code)
        assert result.success
        assert result.stdout.startswith("ok ") and "\ufffd" in result.stdout
        assert await sandbox.get_task_files(task_of(result), "@stdout") == b"ok \xff\xfe\x80 end\n"

    # ------------------------------------------------------------------ limits
    async def test_timeout_kills_the_program_and_its_children(self, sandbox: AsyncSandbox) -> None:
        result = await sandbox.execute_code(STUBBORN_CHILD, timeout=2)
        assert not result.success and result.timed_out
        assert result.termination_reason == "timeout"
        assert "timed out" in (result.error_message or "")
        first = await sandbox.get_task_files(task_of(result), "heartbeat.txt")
        await asyncio.sleep(1.0)
        second = await sandbox.get_task_files(task_of(result), "heartbeat.txt")
        assert first == second, "a child survived the timeout and kept writing"
        assert (await sandbox.execute_code("print('next')")).stdout == "next\n"

    async def test_python_memory_limit_is_reported_as_such(self, sandbox: AsyncSandbox) -> None:
        small = derived(sandbox, max_memory_mb=128)
        grow = "hog = []\nwhile True:\n    hog.append(b'x' * (4 << 20))"
        result = await small.execute_code(grow)
        assert not result.success
        assert result.termination_reason == "memory_limit", result
        assert "memory" in (result.error_message or "")

    async def test_node_runs_under_256mb_and_its_memory_limit_is_reported(
        self, sandbox: AsyncSandbox
    ) -> None:
        small = derived(sandbox, max_memory_mb=256)
        ok = await small.execute_code("console.log([1,2,3].map(x => x * 2).join(','))", runtime="node")
        assert ok.success and ok.stdout == "2,4,6\n", ok
        bomb = "const a = []; for (;;) { a.push(new Array(1e6).fill(1.5)); }"
        result = await small.execute_code(bomb, runtime="node", timeout=60)
        assert not result.success
        assert result.termination_reason == "memory_limit", result

    async def test_file_size_limit_is_reported(self, sandbox: AsyncSandbox) -> None:
        small = derived(sandbox, max_file_size_mb=1)
        code = "with open('big.bin', 'wb') as fh:\n    fh.write(b'x' * (3 * 1024 * 1024))"
        result = await small.execute_code(code)
        assert not result.success
        assert result.termination_reason == "file_size_limit", result

    # ------------------------------------------------------------------ work dirs
    async def test_session_dir_persists_between_runs(self, sandbox: AsyncSandbox) -> None:
        session = "conformance-" + os.urandom(4).hex()
        first = await sandbox.execute_code("open('state.txt','w').write('kept')", session_id=session)
        second = await sandbox.execute_code("print(open('state.txt').read())", session_id=session)
        assert first.success and second.success, second.stderr
        assert second.stdout == "kept\n"
        assert first.working_directory == second.working_directory
        assert first.task_hash != second.task_hash
        assert await sandbox.get_task_files(task_of(second), "state.txt") == "kept"

    async def test_ephemeral_dir_vanishes_after_the_run(self, sandbox: AsyncSandbox) -> None:
        result = await sandbox.execute_code(
            "open('tmp.txt','w').write('x'); print('done')", create_filesystem=False
        )
        assert result.success and result.stdout == "done\n"
        assert await sandbox.get_task_files(task_of(result)) == {}
        listing = await sandbox.list_task_files(task_of(result))
        assert listing["exists"] is False

    async def test_cleanup_removes_by_age_only(self, sandbox: AsyncSandbox) -> None:
        result = await sandbox.execute_code("open('f.txt','w').write('x')")
        kept = await sandbox.cleanup_tasks(hours=1)
        assert result.task_hash not in kept.removed_tasks
        assert await sandbox.get_task_files(task_of(result), "f.txt") == "x"
        gone = await sandbox.cleanup_tasks(hours=0)
        assert result.task_hash in gone.removed_tasks, gone
        with pytest.raises(TaskNotFoundError):
            await sandbox.get_task_files(task_of(result))

    async def test_concurrent_runs_do_not_interfere(self, sandbox: AsyncSandbox) -> None:
        code = (
            "import os, time\nn = os.environ['N']\nopen('mine.txt','w').write(n)\n"
            "time.sleep(0.2)\nprint(n, open('mine.txt').read(), sorted(os.listdir('.')))"
        )
        results = await asyncio.gather(
            *(sandbox.execute_code(code, env_vars={"N": str(i)}) for i in range(20))
        )
        assert len({r.task_hash for r in results}) == 20
        assert len({r.working_directory for r in results}) == 20
        for i, r in enumerate(results):
            assert r.success, r.stderr
            assert r.stdout == f"{i} {i} ['mine.txt']\n"

    async def test_concurrent_ephemeral_runs_leave_no_dirs(self, sandbox: AsyncSandbox) -> None:
        code = "open('scratch.bin','wb').write(b'x' * 4096); print('ok')"
        results = await asyncio.gather(
            *(sandbox.execute_code(code, create_filesystem=False) for _ in range(20))
        )
        assert all(r.success and r.stdout == "ok\n" for r in results)
        listings = await asyncio.gather(*(sandbox.list_task_files(task_of(r)) for r in results))
        assert not any(listing["exists"] for listing in listings)

    # ------------------------------------------------------------------ status
    async def test_instance_status_reports_runtimes(self, sandbox: AsyncSandbox) -> None:
        status = await sandbox.instance_status()
        assert status.healthy, status
        names = {r.name: r for r in status.runtimes}
        assert set(names) == set(sandbox.allowed_runtimes())
        assert names["python3"].available and (names["python3"].version or "").startswith("Python 3")
        assert (names["node"].version or "").startswith("v")
        assert status.disk_free_mb and status.disk_free_mb > 0
