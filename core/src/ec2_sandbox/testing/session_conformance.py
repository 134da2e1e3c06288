"""Sessions' persistent interpreters, as every transport must serve them (part of the conformance suite).

The interpreter lives on the target and outlives each call: over SSM each cell is its own command, over SSH
and locally a request on a channel. The same assertions hold on each.
"""

from __future__ import annotations

import asyncio
import base64
import uuid

from ..sandbox import AsyncSandbox
from ..schema import ExecutionResult

#: A 1x1 PNG (what a `_repr_png_` returns).
PNG_1x1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def task_of(result: ExecutionResult) -> str:
    """The task hash of a run: every run names its task, whose files and output stay readable."""
    assert result.task_hash is not None, result
    return result.task_hash


def _sid() -> str:
    return "s-" + uuid.uuid4().hex[:12]


class SessionSuite:
    """Mixed into :class:`ConformanceSuite`; uses its ``sandbox`` fixture."""

    async def test_session_keeps_variables_between_cells(self, sandbox: AsyncSandbox) -> None:
        session = sandbox.session(_sid())
        first = await session.run_code("import math\nx = 41\nprint('set')")
        assert first.success, first
        assert (first.state, first.execution_count, first.stdout) == ("new", 1, "set\n")
        second = await session.run_code("y = x + 1\ny")
        assert second.success, second
        assert (second.state, second.execution_count) == ("kept", 2)
        assert [r.main for r in second.results] == [True]
        assert second.results[0].text == "42"
        await session.close()

    async def test_session_reports_exceptions_and_keeps_state(self, sandbox: AsyncSandbox) -> None:
        session = sandbox.session(_sid())
        await session.run_code("data = [1, 2, 3]")
        failed = await session.run_code("print('before')\n1 / 0")
        assert not failed.success
        assert failed.error is not None and failed.error.name == "ZeroDivisionError"
        assert any("<cell-2>" in line for line in failed.error.traceback), failed.error.traceback
        assert not any("kernel" in line for line in failed.error.traceback), failed.error.traceback
        assert failed.stdout == "before\n" and failed.state == "kept"
        after = await session.run_code("sum(data)")
        assert after.success and after.results[0].text == "6"
        await session.close()

    async def test_session_timeout_interrupts_and_keeps_state(self, sandbox: AsyncSandbox) -> None:
        session = sandbox.session(_sid())
        await session.run_code("kept = 'yes'")
        slow = await session.run_code("import time\nprint('start', flush=True)\ntime.sleep(60)", timeout=2)
        assert not slow.success and slow.timed_out and slow.termination_reason == "timeout"
        assert slow.state == "kept" and slow.error is not None and slow.error.name == "interrupted"
        assert "start" in slow.stdout
        after = await session.run_code("kept")
        assert after.results[0].text == "'yes'" and after.state == "kept"
        await session.close()

    async def test_session_cell_that_ignores_its_interrupt_loses_the_state(
        self, sandbox: AsyncSandbox
    ) -> None:
        session = sandbox.session(_sid())
        # The interrupt is ignored from a cell before the stuck one: however slow the machine, the stuck
        # cell cannot be interrupted before it has made itself deaf.
        await session.run_code("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nkept = 1")
        stuck = await session.run_code("while True:\n    pass", timeout=1)
        assert not stuck.success and stuck.state == "lost"
        assert stuck.state_lost is not None and stuck.state_lost.reason == "interrupt"
        fresh = await session.run_code("'kept' in globals()")
        assert fresh.state == "new" and fresh.results[0].text == "False"
        assert fresh.state_lost is not None and fresh.state_lost.reason == "interrupt"
        await session.close()

    async def test_session_reattaches_from_another_client(self, sandbox: AsyncSandbox) -> None:
        sid = _sid()
        await sandbox.session(sid).run_code("secret = 'from the first client'")
        other = AsyncSandbox(sandbox.config, transport=sandbox.transport, registry=sandbox.registry)
        seen = await other.session(sid).run_code("secret")
        assert seen.results[0].text == "'from the first client'" and seen.state == "kept"
        await other.session(sid).close()

    async def test_session_files_move_without_code(self, sandbox: AsyncSandbox) -> None:
        session = sandbox.session(_sid())
        await session.write_files({"data/in.csv": "a,b\n1,2\n", "blob.bin": bytes(range(256))})
        listed = {f["path"]: f["size"] for f in await session.list_files()}
        assert listed == {"data/in.csv": 8, "blob.bin": 256}
        assert (await session.read_file("data/in.csv")).content == "a,b\n1,2\n"
        assert await session.read_bytes("blob.bin") == bytes(range(256))
        seen = await session.run_code("open('data/in.csv').read().splitlines()[1]")
        assert seen.results[0].text == "'1,2'"
        await session.run_code("open('out.txt', 'w').write('made by a cell')")
        assert (await session.read_file("out.txt")).content == "made by a cell"
        assert await session.remove_files("data", "missing.txt") == ["data"]
        assert {f["path"] for f in await session.list_files()} == {"blob.bin", "out.txt"}
        await session.close()

    async def test_session_tmp_and_work_dir_persist_for_commands_and_cells(
        self, sandbox: AsyncSandbox
    ) -> None:
        session = sandbox.session(_sid())
        made = await session.run_command("echo from-bash > /tmp/shared.txt && pwd")
        assert made.success, made
        read = await session.run_code("open('/tmp/shared.txt').read()")
        assert read.results[0].text == "'from-bash\\n'"
        again = await session.run_command("cat /tmp/shared.txt")
        assert again.stdout == "from-bash\n"
        await session.close()

    async def test_session_rich_results(self, sandbox: AsyncSandbox) -> None:
        session = sandbox.session(_sid())
        code = (
            "import base64\n"
            f"PNG = base64.b64decode({base64.b64encode(PNG_1x1).decode()!r})\n"
            "class Table:\n"
            "    def _repr_html_(self): return '<table><tr><td>1</td></tr></table>'\n"
            "    def _repr_json_(self): return {'rows': 1}\n"
            "    def __repr__(self): return 'Table(1)'\n"
            "class Picture:\n"
            "    def _repr_png_(self): return PNG\n"
            "display(Picture())\n"
            "Table()"
        )
        result = await session.run_code(code)
        assert result.success, result
        picture, table = result.results
        assert not picture.main and base64.b64decode(picture.data["image/png"]) == PNG_1x1
        assert picture.files["image/png"].startswith("@display-")
        assert table.main and table.text == "Table(1)"
        assert table.data["text/html"].startswith("<table>")
        assert table.data["application/json"] == '{"rows": 1}'
        page = await sandbox.read_task_file(task_of(result), picture.files["image/png"])
        assert page.data() == PNG_1x1
        await session.close()

    async def test_session_restart_drops_state_and_keeps_files(self, sandbox: AsyncSandbox) -> None:
        session = sandbox.session(_sid())
        await session.run_code("x = 1\nopen('keep.txt', 'w').write('kept')")
        await session.restart()
        fresh = await session.run_code("import os\n('x' in globals(), open('keep.txt').read())")
        assert fresh.state == "new" and fresh.state_lost is None
        assert fresh.results[0].text == "(False, 'kept')"
        await session.close()
        assert (await session.status())["live"] is False

    async def test_session_cells_queue_in_order(self, sandbox: AsyncSandbox) -> None:
        session = sandbox.session(_sid())
        await session.run_code("order = []")
        first = asyncio.create_task(session.run_code("import time\ntime.sleep(1.5)\norder.append('first')"))
        await asyncio.sleep(0.5)  # the first cell is sent (and running) before the second
        second = asyncio.create_task(session.run_code("order.append('second')\nlist(order)"))
        done_first, done_second = await asyncio.gather(first, second)
        assert done_first.success and done_second.success
        assert done_second.results[0].text == "['first', 'second']"
        await session.close()

    async def test_session_idle_interpreter_exits_and_says_so(self, sandbox: AsyncSandbox) -> None:
        # model_copy skips validation: a 2 s idle limit (below what a configuration may set) keeps it short.
        config = sandbox.config.model_copy(update={"session_idle_timeout": 2})
        quick = AsyncSandbox(config, transport=sandbox.transport, registry=sandbox.registry)
        session = quick.session(_sid())
        await session.run_code("x = 1")
        for _ in range(300):
            if not (await session.status())["live"]:
                break
            await asyncio.sleep(0.1)
        status = await session.status()
        assert status["live"] is False and status["ended"] == "idle"
        after = await session.run_code("'x' in globals()")
        assert after.state == "new" and after.results[0].text == "False"
        assert after.state_lost is not None and after.state_lost.reason == "idle"
        await session.close()
